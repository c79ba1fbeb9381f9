//! `ftvm mr run APP INPUT... --out DIR`: submits a MapReduce job to the
//! lab's coordinator through the job client state machine
//! (`guest/mapreduce`), shows its progress (tasks done, failed attempts,
//! re-executions), then reads the output files from GFS into DIR.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mapreduce::wire::{AppKind, JobProgress, JobSpec, JobState};
use mapreduce::Event;

use super::session::{now_ms, Session};
use super::ClientError;
use crate::lab::StateArgs;

#[derive(Args)]
pub struct MrArgs {
    #[command(subcommand)]
    command: MrCommand,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Subcommand)]
enum MrCommand {
    /// Run a job over GFS files and fetch its output into a local directory.
    ///
    /// APP: wc (word count), indexer (inverted index), grep PATTERN, sort.
    /// INPUT: GFS paths (put local files in with `ftvm gfs put`).
    ///
    /// Examples:
    ///   ftvm gfs put book.txt /data/book.txt
    ///   ftvm mr run wc /data/book.txt --out counts/
    ///   ftvm mr run grep whale /data/book.txt --out lines/ --reducers 1
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// wc, indexer, grep PATTERN or sort, then the GFS input paths.
    #[arg(required = true, num_args = 2.., value_name = "APP [PATTERN] INPUT")]
    words: Vec<String>,
    /// The local directory for the output files (part-00000, ...).
    #[arg(long)]
    out: PathBuf,
    /// Number of reduce tasks (and output files).
    #[arg(long, default_value_t = 2)]
    reducers: u32,
    /// Give up after this long.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout_s: u64,
}

/// Parses `APP [PATTERN] INPUT...`.
fn parse_app(words: &[String]) -> Result<(AppKind, Vec<String>), ClientError> {
    let (app, rest) = words.split_first().expect("clap requires two words");
    let (kind, inputs) = match app.as_str() {
        "wc" => (AppKind::WordCount, rest),
        "indexer" => (AppKind::InvertedIndex, rest),
        "sort" => (AppKind::Sort, rest),
        "grep" => match rest.split_first() {
            Some((pattern, inputs)) => (AppKind::Grep { pattern: pattern.clone() }, inputs),
            None => return Err(ClientError::Usage("grep needs a PATTERN".into())),
        },
        other => {
            return Err(ClientError::Usage(format!(
                "unknown app `{other}`: use wc, indexer, grep PATTERN or sort"
            )))
        }
    };
    if inputs.is_empty() {
        return Err(ClientError::Usage("name at least one GFS INPUT path".into()));
    }
    if let Some(bad) = inputs.iter().find(|input| !input.starts_with('/')) {
        return Err(ClientError::Usage(format!(
            "INPUT `{bad}`: name a GFS path such as /data/book.txt (put local files in with \
             `ftvm gfs put {bad} /data/{bad}`)"
        )));
    }
    Ok((kind, inputs.to_vec()))
}

/// Runs `ftvm mr ...`; returns the exit status.
pub fn run(args: MrArgs) -> anyhow::Result<u8> {
    let MrCommand::Run(run) = args.command;
    let (app, inputs) = parse_app(&run.words)?;
    let dir = args.state.state_dir();
    let state = dir.load()?;
    let coordinator = state.plan.coordinator().ok_or_else(|| {
        ClientError::Usage(
            "this lab runs no MapReduce: add an mr-coordinator and mr-workers to its lab file"
                .into(),
        )
    })?;
    super::session::ensure_running(&state, &coordinator.name)?;
    let mut session = Session::open(&dir)?;
    let spec = new_spec(app, inputs, run.reducers);
    let started = Instant::now();
    let bar = job_bar();
    let mut last = JobProgress::default();
    let outputs =
        run_job(&mut session, spec, Duration::from_secs(run.timeout_s), &mut |_, progress| {
            show(&bar, progress);
            last = *progress;
        })?;
    bar.finish_and_clear();
    let job_s = started.elapsed().as_secs_f64();
    let bytes = fetch_outputs(&mut session, &outputs, &run.out)?;
    println!(
        "job finished in {job_s:.1} s ({}); {} output files ({bytes} bytes) in {}",
        describe(&last),
        outputs.len(),
        run.out.display()
    );
    Ok(0)
}

/// A job spec with a fresh job id and output directory.
pub fn new_spec(app: AppKind, inputs: Vec<String>, reducers: u32) -> JobSpec {
    let job = now_ms();
    JobSpec {
        job,
        app,
        inputs,
        reduce_tasks: reducers.max(1),
        output_dir: format!("/mr/out/job-{job}"),
    }
}

/// A progress bar over map and reduce tasks.
pub fn job_bar() -> ProgressBar {
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template(
            "{spinner} job [{bar:30}] {pos}/{len} tasks {msg} ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Shows `progress` on `bar`.
pub fn show(bar: &ProgressBar, progress: &JobProgress) {
    bar.set_length(u64::from((progress.maps + progress.reduces).max(1)));
    bar.set_position(u64::from(progress.maps_done + progress.reduces_done));
    bar.set_message(describe(progress));
}

/// `maps 3/4, reduces 0/2, 1 failed attempt, ...`.
pub fn describe(progress: &JobProgress) -> String {
    let mut text = format!(
        "maps {}/{}, reduces {}/{}",
        progress.maps_done, progress.maps, progress.reduces_done, progress.reduces
    );
    for (count, what) in [
        (progress.attempts_failed, "failed attempts"),
        (progress.maps_reexecuted, "maps re-executed"),
        (progress.workers_lost, "workers lost"),
    ] {
        if count > 0 {
            text.push_str(&format!(", {what}: {count}"));
        }
    }
    text
}

/// Submits `spec` and waits for it, calling `watch` with the progress on
/// every status (and about every 100 ms with the last one); the output files.
pub fn run_job(
    session: &mut Session,
    spec: JobSpec,
    limit: Duration,
    watch: &mut dyn FnMut(&mut Session, &JobProgress),
) -> Result<Vec<String>, ClientError> {
    let job = spec.job;
    let deadline = Instant::now() + limit;
    session.submit_job(spec);
    let mut progress = JobProgress::default();
    loop {
        session.pump(Instant::now() + Duration::from_millis(100));
        for event in std::mem::take(&mut session.mr_events) {
            let Event::JobStatus { job: id, state } = event else { continue };
            if id != job {
                continue;
            }
            match state {
                JobState::Running(now) => progress = now,
                JobState::Finished { outputs, progress: last } => {
                    progress = last;
                    watch(session, &progress);
                    return Ok(outputs);
                }
                JobState::Busy => {
                    return Err(ClientError::Job(
                        "was refused: another job is running; wait for it to finish".into(),
                    ))
                }
                JobState::Rejected => {
                    return Err(ClientError::Job(
                        "was rejected: an input file is missing (see `ftvm gfs ls`) or \
                         --reducers is 0"
                            .into(),
                    ))
                }
            }
        }
        watch(session, &progress);
        if crate::stop::stop_requested() {
            return Err(ClientError::Interrupted);
        }
        if Instant::now() >= deadline {
            let coordinator = session.plan.coordinator().map(|vm| vm.node).unwrap_or(0);
            return Err(match session.problem(coordinator) {
                Some(problem) => ClientError::Unreachable {
                    what: "the MapReduce coordinator".into(),
                    detail: problem.clone(),
                },
                None => ClientError::Job(format!(
                    "did not finish within {} s ({})",
                    limit.as_secs(),
                    describe(&progress)
                )),
            });
        }
    }
}

/// Reads the job's output files from GFS into `dir`; the bytes written.
pub fn fetch_outputs(
    session: &mut Session,
    outputs: &[String],
    dir: &Path,
) -> Result<u64, ClientError> {
    std::fs::create_dir_all(dir).map_err(|source| ClientError::Local {
        action: "create",
        path: dir.into(),
        source,
    })?;
    let mut bytes = 0;
    for path in outputs {
        let data = super::gfs::get(session, path, false)?;
        let name = path.rsplit('/').next().unwrap_or(path);
        let local = dir.join(name);
        std::fs::write(&local, &data).map_err(|source| ClientError::Local {
            action: "write",
            path: local,
            source,
        })?;
        bytes += data.len() as u64;
    }
    Ok(bytes)
}
