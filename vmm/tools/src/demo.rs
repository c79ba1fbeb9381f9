//! `ftvm demo`: the whole story on one machine. It brings up the built-in
//! lab (the GFS master and the MapReduce coordinator as FT pairs), puts a
//! few MiB of text into GFS, runs word count, crashes the host of the
//! coordinator's primary and then the host of the GFS master's primary while
//! the job runs, shows each failover as it happens (who died, who went live,
//! how long the clients waited), checks the job's output against a word
//! count computed on the host, and takes the lab down.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use gfs::client::{ClientOp, OpId};
use gfs::pcg::Pcg32;
use indicatif::ProgressBar;
use mapreduce::app::words;
use mapreduce::wire::{AppKind, JobProgress};

use crate::clients::session::Session;
use crate::clients::{gfs as gfs_client, mr, ClientError};
use crate::lab::spec::VmPlan;
use crate::lab::state::{LabState, Side, StateDir};
use crate::lab::{teardown, up};

#[derive(Args)]
pub struct DemoArgs {
    /// Text to put into GFS and count, in MiB (split over two files).
    #[arg(long, default_value_t = 8)]
    mib: usize,
    /// Where the demo's lab keeps its state (removed at the end).
    #[arg(long, default_value = "/run/ftvm-demo", value_name = "DIR")]
    state: PathBuf,
    /// Leave the lab running at the end (remove it with `ftvm lab down --state DIR`).
    #[arg(long)]
    keep: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the output does not match the host's word count: {0}")]
    Mismatch(String),
}

/// Takes the lab down when the demo ends, however it ends.
struct LabGuard {
    dir: StateDir,
    keep: bool,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(error) = teardown::down(&self.dir) {
                eprintln!("ftvm: demo: could not remove the lab: {error} (try `ftvm lab down --state {}`)", self.dir.dir.display());
            }
        }
    }
}

/// Runs the demo; returns the exit status.
pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let dir = StateDir::new(Some(args.state.clone()));
    if dir.exists() {
        println!("removing the lab a previous demo left in {}", dir.dir.display());
        teardown::down(&dir).map_err(DemoError::from)?;
    }
    println!("== 1. lab up: 5 simulated hosts (network namespaces), GFS master and MR coordinator as FT pairs");
    let state = up::up(&dir, None, Duration::from_secs(90)).map_err(DemoError::from)?;
    let _guard = LabGuard { dir: dir.clone(), keep: args.keep };
    print!("{}", crate::lab::status::table(&crate::lab::status::status(&state)));
    println!("   up in {:.1} s", started.elapsed().as_secs_f64());

    let mut session = Session::open(&dir)?;
    println!("== 2. put {} MiB of text into GFS", args.mib);
    let files = texts(args.mib);
    let put_started = Instant::now();
    for (path, data) in &files {
        gfs_client::put(&mut session, path, data, true)?;
    }
    let put_s = put_started.elapsed().as_secs_f64();
    let bytes: usize = files.iter().map(|(_, data)| data.len()).sum();
    println!(
        "   {} files, {bytes} bytes in {put_s:.1} s ({:.1} MB/s), {} replicas of each {} KiB chunk",
        files.len(),
        bytes as f64 / put_s / 1e6,
        state.plan.cluster.replicas,
        state.plan.cluster.chunk_kib
    );

    println!("== 3. word count, crashing the coordinator's primary host and then the master's during the job");
    let spec =
        mr::new_spec(AppKind::WordCount, files.iter().map(|(path, _)| path.clone()).collect(), 3);
    let bar = mr::job_bar();
    let mut script = Script::new(&state, bar.clone());
    let job_started = Instant::now();
    let outputs =
        mr::run_job(&mut session, spec, Duration::from_secs(90), &mut |session, progress| {
            script.step(&dir, session, progress)
        })?;
    bar.finish_and_clear();
    script.finish(&mut session);
    println!(
        "   job finished in {:.1} s: {}",
        job_started.elapsed().as_secs_f64(),
        mr::describe(&script.progress)
    );

    println!("== 4. check the output against a word count computed on the host");
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut output_bytes = 0;
    for path in &outputs {
        let data = gfs_client::get(&mut session, path, false)?;
        output_bytes += data.len();
        for line in String::from_utf8_lossy(&data).lines() {
            let (word, count) = line
                .rsplit_once(' ')
                .ok_or_else(|| DemoError::Mismatch(format!("line `{line}` in {path}")))?;
            let count = count
                .parse()
                .map_err(|_| DemoError::Mismatch(format!("line `{line}` in {path}")))?;
            if counted.insert(word.to_string(), count).is_some() {
                return Err(DemoError::Mismatch(format!("`{word}` is counted twice")).into());
            }
        }
    }
    let expected = host_word_count(&files);
    if counted != expected {
        let differing = expected.iter().find(|(word, count)| counted.get(*word) != Some(count));
        return Err(DemoError::Mismatch(format!(
            "{} words in the output, {} on the host; first difference: {differing:?}",
            counted.len(),
            expected.len()
        ))
        .into());
    }
    let words: u64 = expected.values().sum();
    println!(
        "   output matched: {} distinct words, {words} words in all, {} output files ({output_bytes} bytes)",
        expected.len(),
        outputs.len()
    );
    drop(session);
    println!("== 5. lab down");
    drop(_guard);
    println!(
        "demo done in {:.1} s: two hosts crashed during the job, the output matched",
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Two files of lines of words drawn from a Zipf-like vocabulary.
fn texts(mib: usize) -> Vec<(String, Vec<u8>)> {
    const SYLLABLES: [&str; 12] =
        ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fe"];
    let mut rng = Pcg32::new(2026, 11);
    (0..2)
        .map(|file| {
            let bytes = (mib << 20) / 2;
            let mut data = Vec::with_capacity(bytes + 64);
            while data.len() < bytes {
                for index in 0..rng.range_inclusive(4, 12) {
                    if index > 0 {
                        data.push(b' ');
                    }
                    let rank = rng.below(40) * rng.below(40);
                    data.extend_from_slice(SYLLABLES[(rank % 12) as usize].as_bytes());
                    data.extend_from_slice(SYLLABLES[(rank / 12 % 12) as usize].as_bytes());
                    if rank >= 144 {
                        data.extend_from_slice(SYLLABLES[(rank / 144) as usize % 12].as_bytes());
                    }
                }
                data.push(b'\n');
            }
            (format!("/demo/text-{file}.txt"), data)
        })
        .collect()
}

/// The plain host word count of `files` (words as the app splits them).
fn host_word_count(files: &[(String, Vec<u8>)]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (_, data) in files {
        for word in words(data) {
            *counts.entry(String::from_utf8_lossy(word).into_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// One planned crash: the host of a pair's primary.
struct Crash {
    vm: VmPlan,
    host: String,
    backup_log: PathBuf,
    backup_host: String,
    at: Option<Instant>,
    went_live: Option<Instant>,
    /// When the crashed service answered this client again.
    answered: Option<Instant>,
}

/// The demo's crashes, driven from the job's progress callback.
struct Script {
    crashes: Vec<Crash>,
    bar: ProgressBar,
    /// A listing in flight to the GFS master (to time its answers) and when it was sent.
    probe: Option<(OpId, Instant)>,
    /// The job's last progress.
    progress: JobProgress,
}

impl Script {
    fn new(state: &LabState, bar: ProgressBar) -> Script {
        let crash = |vm: &VmPlan| {
            let backup = state
                .procs
                .iter()
                .find(|proc| proc.vm == vm.name && proc.side == Side::Backup)
                .expect("the demo lab's pairs have backups");
            Crash {
                vm: vm.clone(),
                host: vm.host.clone(),
                backup_log: backup.log.clone(),
                backup_host: backup.host.clone(),
                at: None,
                went_live: None,
                answered: None,
            }
        };
        let coordinator = state.plan.coordinator().expect("the demo lab runs MapReduce");
        Script {
            crashes: vec![crash(coordinator), crash(state.plan.master())],
            bar,
            probe: None,
            progress: JobProgress::default(),
        }
    }

    fn say(&self, text: String) {
        // A hidden bar (output not a terminal) prints nothing.
        if self.bar.is_hidden() {
            println!("   {text}");
        } else {
            self.bar.println(format!("   {text}"));
        }
    }

    /// Called about every 100 ms while the job runs.
    fn step(&mut self, dir: &StateDir, session: &mut Session, progress: &JobProgress) {
        mr::show(&self.bar, progress);
        self.progress = *progress;
        self.probe_master(session);
        for index in 0..self.crashes.len() {
            let previous_done = index == 0 || self.crashes[index - 1].answered.is_some();
            let crash = &self.crashes[index];
            if crash.at.is_none() && previous_done && progress.maps > 0 {
                self.crash(dir, index);
            }
            self.watch(session, index);
        }
    }

    fn crash(&mut self, dir: &StateDir, index: usize) {
        let host = self.crashes[index].host.clone();
        match teardown::kill_target(dir, &host) {
            Ok(killed) => {
                self.crashes[index].at = Some(Instant::now());
                self.say(format!(
                    "CRASH {host}: links down, VMMs killed: {}",
                    killed.vmms.join(", ")
                ));
            }
            Err(error) => self.say(format!("could not crash {host}: {error}")),
        }
    }

    /// Notices the backup going live and the service answering again.
    fn watch(&mut self, session: &Session, index: usize) {
        let crash = &self.crashes[index];
        let Some(at) = crash.at else { return };
        if crash.went_live.is_none() {
            let log = std::fs::read_to_string(&crash.backup_log).unwrap_or_default();
            if let Some(line) = log.lines().find(|line| line.contains("role: backup -> live")) {
                let text = format!(
                    "{}: the backup on {} went live {:.2} s after the crash ({})",
                    crash.vm.name,
                    crash.backup_host,
                    at.elapsed().as_secs_f64(),
                    line.trim_start_matches("ftvm: role: ")
                        .split(", at landmark")
                        .next()
                        .unwrap_or(line)
                );
                self.crashes[index].went_live = Some(Instant::now());
                self.say(text);
            }
        }
        let crash = &self.crashes[index];
        if let (None, Some(live)) = (crash.answered, crash.went_live) {
            // Anything heard after go-live comes from the new primary.
            if let Some(heard) = session.heard_at.get(&crash.vm.node).filter(|heard| **heard > live)
            {
                let waited = heard.duration_since(at).as_secs_f64();
                self.crashes[index].answered = Some(*heard);
                self.say(format!(
                    "{}: answering this client again {waited:.2} s after the crash (same TCP stream)",
                    self.crashes[index].vm.name
                ));
            }
        }
    }

    /// Keeps one listing in flight to the GFS master, so its answers are timed.
    fn probe_master(&mut self, session: &mut Session) {
        if let Some((op, _)) = self.probe {
            if session.gfs_result(op).is_none() {
                return;
            }
        }
        let op = session.gfs_submit(ClientOp::List { prefix: "/demo/".into() });
        self.probe = Some((op, Instant::now()));
    }

    /// Waits (a little) for failovers the job outran, and sums up.
    fn finish(&mut self, session: &mut Session) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.crashes.iter().any(|crash| crash.at.is_some() && crash.answered.is_none())
            && Instant::now() < deadline
            && !crate::stop::stop_requested()
        {
            self.probe_master(session);
            session.pump(Instant::now() + Duration::from_millis(100));
            for index in 0..self.crashes.len() {
                self.watch(session, index);
            }
        }
        for crash in &self.crashes {
            if crash.at.is_none() {
                self.say(format!(
                    "{}: the job finished before its host was crashed",
                    crash.vm.name
                ));
            }
        }
    }
}
