//! `cargo bench -p ftvm-tests --bench ft -- --runs N [--baseline PATH]`: the
//! FT pair against a standalone VM, in one run: echo throughput and 1-byte round trip (and
//! their ratios), log bandwidth, backup lag, the backup's CPU time relative
//! to the primary's, each VMM's CPU per MB moved, and the failover time a client sees (SIGKILL of the
//! primary to the next echoed byte; at least 10 trials). Throughput and
//! round trips come from the compiled client (`ftvm-netclient`), so the
//! ratio is not bounded by an interpreter; whole-machine CPU per MB shows
//! what the pair costs the host. The throughput rows come twice: with every process sharing
//! every core (the pair on one host), and with the backup alone on core 1 while the primary (or
//! the standalone VM) and the client share core 0 (the backup on a host of its own, as
//! deployed, against a standalone VM with as much CPU as the primary). `--baseline PATH` adds the throughput rows
//! of another build of the `ftvm` binary (prefixed `before:`). Needs root,
//! /dev/kvm and python3.
//!
//! The failover part puts the pair on two simulated hosts ([`TwoHosts`]) and, for each fault
//! (SIGKILL of the primary; a host crash: its links down, then SIGKILL, no FIN; SIGSTOP past
//! the failure timeout, then SIGCONT; the log link cut both ways), runs `--trials N` (20)
//! failovers under a paced stream and a request/response client. It prints what the clients
//! saw (longest gap: median, p99, max; bytes lost, duplicated, reordered; resets) and where
//! the time went, from the timestamps the VMMs print. `--failover-only` skips the throughput
//! rows (`--trials 0` skips the failovers); `--faults kill,crash,stop,cut` picks faults;
//! `--failure-timeout-ms MS` is passed to both sides.
//!
//! `--false-failovers SECONDS` runs, instead, a pair on this host under load for that long (a
//! stress guest on the primary, a CPU hog per core in the host) and counts what a failure
//! timeout that is too short costs: false failovers (a side taking over with both alive), and
//! the backup taking the guest's traffic for a while (half the timeout of silence).
//!
//! `--transfer TRIALS` measures, instead, adding a backup to a running guest (`add-backup`
//! after a failover, on loopback): the pause, the bytes sent and the pre-copy rounds, for
//! 128 MiB and 1 GiB guests, idle and under the stress role (medians of TRIALS, at least 5).
use std::time::Duration;

use ftvm_tests::bench::{
    available_cores, cpu_seconds, measure_echo, on_cores, runs_arg, MachineCpu, Table,
};
use ftvm_tests::failover::{field, word};
use ftvm_tests::hosts::{TwoHosts, PRIMARY_HOST};
use ftvm_tests::netns::Lab;
use ftvm_tests::{net_packets, summary_field, Reaped};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");
const CHANNEL: &str = "127.0.0.1:7000";
const CONNECTIONS: usize = 2;
const BYTES_EACH: usize = 16 << 20;

fn arbiter_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ftvm-bench-ft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ftvm_tests::init_pair(FTVM, &dir);
    dir
}

/// Where a throughput run puts its processes.
#[derive(Clone, Copy)]
enum Layout {
    /// Everything shares every core: the pair on one host.
    OneHost,
    /// The backup alone on core 1, the primary (or the standalone VM) and the client on core 0:
    /// the backup on a host of its own, as deployed, and the primary's host no bigger than the
    /// standalone VM's.
    BackupOnItsOwnCore,
}

impl Layout {
    fn label(self) -> &'static str {
        match self {
            Layout::OneHost => "",
            Layout::BackupOnItsOwnCore => "backup on its own core: ",
        }
    }

    /// The cores of the primary, the standalone VM and the client.
    fn primary_cores(self) -> Vec<usize> {
        match self {
            Layout::OneHost => (0..available_cores()).collect(),
            Layout::BackupOnItsOwnCore => vec![0],
        }
    }

    fn backup_cores(self) -> Vec<usize> {
        match self {
            Layout::OneHost => (0..available_cores()).collect(),
            Layout::BackupOnItsOwnCore => vec![1],
        }
    }
}

/// A pair of the `ftvm` binary at `exe` running the echo guest in `lab` (tap0: primary, tap1:
/// backup), each side on the cores `layout` gives it.
fn pair_of(exe: &str, lab: &Lab, arbiter: &std::path::Path, layout: Layout) -> (Reaped, Reaped) {
    let arbiter = arbiter.to_str().unwrap();
    let backup = on_cores(&layout.backup_cores(), || {
        lab.spawn_in_host(
            exe,
            &[
                "backup",
                "--listen",
                CHANNEL,
                "--arbiter",
                arbiter,
                "--net",
                &lab.net_flag_for(1, 0),
            ],
        )
    });
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let primary = on_cores(&layout.primary_cores(), || {
        lab.spawn_in_host(
            exe,
            &[
                "primary",
                "--stats",
                "--backup",
                CHANNEL,
                "--arbiter",
                arbiter,
                "--net",
                &lab.net_flag_for(0, 0),
                "--cmdline",
                &cmdline,
            ],
        )
    });
    (primary, backup)
}

/// The numbers after `key` in the primary's `ftvm: pair:` line.
fn pair_field(stderr: &str, key: &str) -> Vec<f64> {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("ftvm: pair:"))
        .expect("the primary's --stats line");
    let rest = line.split(key).nth(1).unwrap_or("");
    let first = rest.split_whitespace().next().unwrap_or("");
    first.trim_start_matches('(').split('/').filter_map(|part| part.parse().ok()).collect()
}

/// Standalone and FT pair echo under the `ftvm` binary at `exe`, laid out on the cores as
/// `layout` says, rows prefixed with `build` and the layout.
fn throughput_rows(table: &mut Table, build: &str, exe: &str, layout: Layout) {
    let label = format!("{build}{}", layout.label());
    let client_cores = layout.primary_cores();
    let ip = Lab::guest_ip(0);
    let lab = Lab::new(1);
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let vm = on_cores(&layout.primary_cores(), || {
        lab.spawn_in_host(exe, &["run", "--net", &lab.net_flag(0), "--cmdline", &cmdline])
    });
    // The VMMs' CPU is counted from here, after boot: what the echo sessions cost.
    ftvm_tests::bench::client(&lab, &["wait", &ip, "7", "20"]);
    let solo_vmm_cpu_before = cpu_seconds(vm.pid());
    let machine = MachineCpu::start();
    let (solo_mb_per_s, solo_rtt_us, solo_rtt_p99_us) =
        on_cores(&client_cores, || measure_echo(&lab, NETCLIENT, &ip, CONNECTIONS, BYTES_EACH));
    let solo_machine_cpu = machine.busy().0;
    let solo_vmm_cpu = cpu_seconds(vm.pid()) - solo_vmm_cpu_before;
    let solo = vm.stop();
    drop(lab);

    let lab = Lab::new(2);
    let arbiter = arbiter_dir("pair");
    let (primary, backup) = pair_of(exe, &lab, &arbiter, layout);
    ftvm_tests::bench::client(&lab, &["wait", &ip, "7", "20"]);
    let pair_cpu = || (cpu_seconds(primary.pid()), cpu_seconds(backup.pid()));
    let (primary_cpu_before, backup_cpu_before) = pair_cpu();
    let machine = MachineCpu::start();
    let (ft_mb_per_s, ft_rtt_us, ft_rtt_p99_us) =
        on_cores(&client_cores, || measure_echo(&lab, NETCLIENT, &ip, CONNECTIONS, BYTES_EACH));
    let ft_machine_cpu = machine.busy().0;
    let (primary_cpu, backup_cpu) = pair_cpu();
    let (primary_session_cpu, backup_session_cpu) =
        (primary_cpu - primary_cpu_before, backup_cpu - backup_cpu_before);
    let primary_out = primary.stop();
    drop(backup);
    let _ = std::fs::remove_dir_all(&arbiter);

    table.add(&format!("{label}standalone echo: throughput"), "MB/s", solo_mb_per_s);
    table.add(&format!("{label}FT echo: throughput"), "MB/s", ft_mb_per_s);
    table.add(&format!("{label}FT / standalone throughput"), "x", ft_mb_per_s / solo_mb_per_s);
    table.add(&format!("{label}standalone echo: 1-byte round trip, median"), "us", solo_rtt_us);
    table.add(&format!("{label}FT echo: 1-byte round trip, median"), "us", ft_rtt_us);
    table.add(
        &format!("{label}FT / standalone round trip (output-rule cost)"),
        "x",
        ft_rtt_us / solo_rtt_us,
    );
    table.add(&format!("{label}standalone echo: 1-byte round trip, p99"), "us", solo_rtt_p99_us);
    table.add(&format!("{label}FT echo: 1-byte round trip, p99"), "us", ft_rtt_p99_us);
    let bandwidth = pair_field(&primary_out.stderr, "log bandwidth ");
    table.add(
        &format!("{label}log bandwidth, whole session"),
        "KB/s",
        bandwidth.first().copied().unwrap_or(0.0) / 1e3,
    );
    let lag_ms = pair_field(&primary_out.stderr, " ms ");
    table.add(&format!("{label}backup lag, median"), "ms", lag_ms[0]);
    table.add(&format!("{label}backup lag, p99"), "ms", lag_ms[1]);
    let lag_entries = pair_field(&primary_out.stderr, "lag entries ");
    table.add(&format!("{label}backup lag in entries, p99"), "entries", lag_entries[1]);
    table.add(&format!("{label}backup CPU time / primary CPU time"), "x", backup_cpu / primary_cpu);
    // Every stream byte crosses the NIC twice (in and echoed out).
    let moved_mb = (2 * CONNECTIONS * BYTES_EACH) as f64 / 1e6;
    table.add(&format!("{label}standalone: whole machine CPU per MB moved"), "ms/MB", {
        solo_machine_cpu * 1e3 / moved_mb
    });
    table.add(&format!("{label}FT: whole machine CPU per MB moved"), "ms/MB", {
        ft_machine_cpu * 1e3 / moved_mb
    });
    // The VMMs' own CPU (all threads, the echo sessions after boot), which other load on a shared
    // machine does not blur: a pair on one host needs both sides' worth; on two hosts, as
    // deployed, the primary's host bears the primary's alone.
    let vmm_cpu_rows = [
        ("standalone", solo_vmm_cpu),
        ("FT primary", primary_session_cpu),
        ("FT backup", backup_session_cpu),
    ];
    for (side, cpu_s) in vmm_cpu_rows {
        table.add(&format!("{label}{side}: VMM CPU per MB moved"), "ms/MB", {
            cpu_s * 1e3 / moved_mb
        });
    }
    for (side, finished) in [("standalone", &solo), ("FT primary", &primary_out)] {
        let landmarks: f64 = summary_field(&finished.stderr, "landmarks")
            .and_then(|value| value.parse().ok())
            .expect("the VMM's summary");
        table.add(&format!("{label}{side}: VM exits per MB moved"), "exits/MB", {
            landmarks / moved_mb
        });
        let (sent, received) = net_packets(&finished.stderr).expect("the VMM's net-tx line");
        table.add(&format!("{label}{side}: packets through the VMM per MB"), "packets/MB", {
            (sent + received) as f64 / moved_mb
        });
    }
}

/// A fault of the primary's host or of the log link, injected while the clients run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL of the primary (its kernel closes the log connection: FIN).
    Kill,
    /// The primary's host crashes: its links go down first, then SIGKILL (no FIN reaches anyone).
    HostCrash,
    /// SIGSTOP of the primary past the failure timeout, then SIGCONT: it must halt, not send.
    Stop,
    /// The log link is cut both ways for a while, both sides alive; one wins the arbiter.
    LogLinkCut,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Kill, Fault::HostCrash, Fault::Stop, Fault::LogLinkCut];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::HostCrash => "host crash",
            Fault::Stop => "SIGSTOP",
            Fault::LogLinkCut => "log-link cut",
        }
    }

    /// `--faults` names.
    fn flag(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::HostCrash => "crash",
            Fault::Stop => "stop",
            Fault::LogLinkCut => "cut",
        }
    }
}

/// `ftvm primary|backup --failure-timeout-ms`'s default.
const DEFAULT_FAILURE_TIMEOUT_MS: f64 = 300.0;
/// How long the primary stays stopped, and the log link cut.
const FAULT_HOLD: Duration = Duration::from_secs(2);
/// How long the clients run before the fault.
const BEFORE_FAULT: Duration = Duration::from_millis(1500);
/// How long the clients run in all.
const WATCH_SECONDS: f64 = 6.0;
/// The stream client's pace (the Python client streamed about this much).
const STREAM_BYTES_PER_S: u64 = 200_000;

/// The `at unix ns N` of the first line of `stderr` containing `marker`.
fn unix_ns_after(stderr: &str, marker: &str, key: &str) -> Option<f64> {
    let line = stderr.lines().find(|line| line.contains(marker))?;
    let rest = line.split(key).nth(1)?;
    rest.split_whitespace().next()?.trim_end_matches(',').parse().ok()
}

/// Where one failover's time went, in ms (None: not printed by this build or this side).
#[derive(Default)]
struct Phases {
    /// Fault to the last time the backup heard the primary (its lease end minus the failure
    /// timeout): log bytes still in flight at the fault arrive after it.
    last_heard_ms: Option<f64>,
    /// Fault to the backup's link reporting the primary lost (or to the primary asking the
    /// arbiter, when the primary won).
    detection_ms: Option<f64>,
    /// The replay taking the rest of the log, after the link failed.
    drain_ms: Option<f64>,
    /// Waiting out the primary's lease (the failure timeout after last hearing it).
    lease_wait_ms: Option<f64>,
    /// The arbiter's test-and-set.
    arbiter_ms: Option<f64>,
    /// Arbiter won to live: TAP flushed, announcement and re-emitted frames out.
    attach_ms: Option<f64>,
    /// Live to the live guest's own first frame out.
    first_frame_out_ms: Option<f64>,
    /// Live to the first frame from the network given to the live guest.
    first_frame_in_ms: Option<f64>,
    /// Live to the end of the stream client's longest gap.
    stream_resumed_ms: Option<f64>,
    /// Fault to live (the backup's go-live or the primary's going solo).
    live_ms: Option<f64>,
}

/// One trial's findings.
struct Trial {
    stream_gap_ms: f64,
    requests_gap_ms: f64,
    /// Lost, duplicated, reordered, corrupt stream bytes.
    stream_damage: [f64; 4],
    /// Wrong replies to requests.
    wrong_replies: f64,
    resets: f64,
    backup_won: bool,
    /// Frames the halted side wrote to its TAP after it resumed or its link healed.
    frames_after_resume: f64,
    /// Frames the primary wrote after its host's links went down (a host crash): released
    /// by the primary, never seen by the world.
    frames_into_dead_host: f64,
    /// The losing side halted on its own (the fault left it alive).
    loser_halted: bool,
    /// A side took over before the fault (a false failover: the link looked dead under load).
    failed_over_before_fault: bool,
    /// The stream's longest gap ended within [`RETRANSMIT_ECHO`] of a retransmission by the
    /// client's own TCP (its timer, not the pair, decided when the stream resumed).
    stream_resumed_by_client_retransmit: bool,
    phases: Phases,
}

/// How soon after the client's retransmission its echo can end a gap (a round trip through
/// the guest, with room for a loaded machine).
const RETRANSMIT_ECHO_MS: f64 = 20.0;
/// How late the client may see its own retransmission (it samples TCP_INFO every millisecond).
const RETRANSMIT_SAMPLING_MS: f64 = 2.0;

/// `times` (Unix ns, comma-separated, `-` for none) as ms after `origin_unix_ns`.
fn times_after(times: &str, origin_unix_ns: f64) -> Vec<f64> {
    times
        .split(',')
        .filter_map(|time| time.parse::<f64>().ok())
        .map(|time| (time - origin_unix_ns) / 1e6)
        .collect()
}

fn signed_ms(ms: Option<f64>) -> String {
    ms.map_or("?".into(), |ms| format!("{ms:+.0}"))
}

fn plus_ms(times: &[f64]) -> String {
    times.iter().map(|ms| format!("{ms:+.0}")).collect::<Vec<_>>().join(",")
}

/// One failover of a pair of `exe` on two hosts under `fault`, with both clients running.
fn failover_trial(exe: &str, fault: Fault, pair_args: &[&str], timeout_ms: f64) -> Trial {
    let hosts = TwoHosts::new(exe);
    let (primary, backup) = hosts.start_pair(exe, pair_args);
    hosts.wait_for_echo(NETCLIENT);
    let watch = hosts.watch(NETCLIENT, WATCH_SECONDS, STREAM_BYTES_PER_S);
    std::thread::sleep(BEFORE_FAULT);
    let fault_unix_ns = vmm::inputs::live::unix_time_ns() as f64;
    let mut frames_after_resume = 0.0;
    // Frames the primary's VMM wrote that did not leave its host (after a crash: links down).
    let held_back = || {
        hosts.frames_sent_by_vmm_on(PRIMARY_HOST) as f64
            - hosts.frames_sent_to_lan_from(PRIMARY_HOST) as f64
    };
    let mut held_back_before_crash = 0.0;
    let mut primary_out = None;
    let mut primary = Some(primary);
    let primary_vmm = primary.as_mut().expect("started");
    match fault {
        Fault::Kill => primary_vmm.kill(),
        Fault::HostCrash => {
            held_back_before_crash = held_back();
            hosts.cut_host(PRIMARY_HOST);
            primary_vmm.kill();
        }
        Fault::Stop => {
            primary_vmm.signal(libc::SIGSTOP);
            std::thread::sleep(FAULT_HOLD);
            let frames = hosts.frames_sent_by_vmm_on(PRIMARY_HOST);
            primary_vmm.signal(libc::SIGCONT);
            let stopped = primary.take().expect("started");
            primary_out = Some(stopped.finish_within(Duration::from_secs(10)));
            frames_after_resume = (hosts.frames_sent_by_vmm_on(PRIMARY_HOST) - frames) as f64;
        }
        Fault::LogLinkCut => {
            hosts.set_log_link(PRIMARY_HOST, false);
            std::thread::sleep(FAULT_HOLD);
            hosts.set_log_link(PRIMARY_HOST, true);
        }
    }
    let watched = watch.finish_within(Duration::from_secs(60));
    let frames_into_dead_host =
        if fault == Fault::HostCrash { held_back() - held_back_before_crash } else { 0.0 };
    let primary_out = match primary_out {
        Some(finished) => finished,
        None => primary.take().expect("not yet reaped").stop(),
    };
    let backup_out = backup.stop();
    drop(hosts);
    let out = &watched.stdout;
    let value = |client: &str, key: &str| {
        field(out, client, key).unwrap_or_else(|| {
            panic!(
                "{}: no {client} {key} in the client's output: {out}{}\n--- primary\n{}\n--- backup\n{}",
                fault.name(),
                watched.stderr,
                primary_out.stderr,
                backup_out.stderr
            )
        })
    };
    let backup_won = backup_out.stderr.contains("role: backup -> live");
    // The side that lost must have halted by itself (status 127), not by our SIGTERM.
    let loser_halted = match fault {
        Fault::Kill | Fault::HostCrash => true,
        Fault::Stop => primary_out.status == Some(127),
        Fault::LogLinkCut if backup_won => primary_out.status == Some(127),
        Fault::LogLinkCut => backup_out.status == Some(127),
    };
    let at = |stderr: &str, marker: &str, key: &str| unix_ns_after(stderr, marker, key);
    let ms = |later: Option<f64>, earlier: Option<f64>| Some((later? - earlier?) / 1e6);
    let fault_at = Some(fault_unix_ns);
    let stream_gap_end = Some(value("stream", "gap_end_unix_ns"));
    let phases = if backup_won {
        let backup = backup_out.stderr.as_str();
        let timeline = |key: &str| at(backup, "go-live timeline", key);
        let (failed, drained) = (timeline("link failed "), timeline("replay drained "));
        let (waited, won) = (timeline("lease waited "), timeline("arbiter won "));
        let live = at(backup, "role: backup -> live", "at unix ns ");
        let lease_end = timeline("lease end ");
        Phases {
            last_heard_ms: ms(lease_end, fault_at).map(|ms| ms - timeout_ms),
            detection_ms: ms(failed, fault_at),
            drain_ms: ms(drained, failed),
            lease_wait_ms: ms(waited, drained),
            arbiter_ms: ms(won, waited),
            attach_ms: ms(live, won),
            first_frame_out_ms: ms(at(backup, "first guest frame out", "at unix ns "), live),
            first_frame_in_ms: ms(at(backup, "first frame in", "at unix ns "), live),
            stream_resumed_ms: ms(stream_gap_end, live),
            live_ms: None,
        }
    } else {
        let primary = primary_out.stderr.as_str();
        let asked = at(primary, "asking the arbiter", "at unix ns ");
        let solo = at(primary, "role: primary -> solo", "at unix ns ");
        Phases {
            detection_ms: ms(asked, fault_at),
            arbiter_ms: ms(solo, asked),
            stream_resumed_ms: ms(stream_gap_end, solo),
            ..Phases::default()
        }
    };
    let live = if backup_won {
        at(&backup_out.stderr, "role: backup -> live", "at unix ns ")
    } else {
        at(&primary_out.stderr, "role: primary -> solo", "at unix ns ")
    };
    let phases = Phases { live_ms: ms(live, fault_at), ..phases };
    // The frames the backup re-emitted at go-live ("..., N packets and M console writes re-emitted").
    let re_emitted = backup_out
        .stderr
        .lines()
        .find(|line| line.contains("role: backup -> live"))
        .and_then(|line| line.split(" packets and").next()?.rsplit(' ').next())
        .unwrap_or("-")
        .to_string();
    let since_fault = |client: &str, key: &str| {
        let time = word(out, client, key).and_then(|time| time.parse::<f64>().ok());
        signed_ms(ms(time, fault_at))
    };
    let retransmits = |client| {
        times_after(word(out, client, "retransmits_unix_ns").unwrap_or("-"), fault_unix_ns)
    };
    let (stream_retransmits, request_retransmits) =
        (retransmits("stream"), retransmits("requests"));
    let stream_gap_end_ms = (value("stream", "gap_end_unix_ns") - fault_unix_ns) / 1e6;
    let stream_resumed_by_client_retransmit = stream_retransmits.iter().any(|sent| {
        (-RETRANSMIT_SAMPLING_MS..RETRANSMIT_ECHO_MS).contains(&(stream_gap_end_ms - sent))
    });
    eprintln!(
        "ft bench: {}: primary last heard {}, lost {}, live {} ms after the fault; {frames_into_dead_host} frames into the dead host, {re_emitted} re-emitted; stream gap {:.0} ms ({} -> {}), client retransmits {}; requests gap {:.0} ms ({} -> {}), client retransmits {}",
        fault.name(),
        signed_ms(phases.last_heard_ms),
        signed_ms(phases.detection_ms),
        signed_ms(phases.live_ms),
        value("stream", "gap_ms"),
        since_fault("stream", "gap_start_unix_ns"),
        since_fault("stream", "gap_end_unix_ns"),
        plus_ms(&stream_retransmits),
        value("requests", "gap_ms"),
        since_fault("requests", "gap_start_unix_ns"),
        since_fault("requests", "gap_end_unix_ns"),
        plus_ms(&request_retransmits),
    );
    let damage = ["lost_bytes", "duplicated_bytes", "reordered_bytes", "corrupt_bytes"];
    Trial {
        stream_gap_ms: value("stream", "gap_ms"),
        requests_gap_ms: value("requests", "gap_ms"),
        stream_damage: damage.map(|key| value("stream", key)),
        wrong_replies: value("requests", "wrong_replies"),
        resets: value("stream", "resets") + value("requests", "resets"),
        backup_won,
        frames_after_resume,
        frames_into_dead_host,
        loser_halted,
        failed_over_before_fault: phases.live_ms.is_some_and(|ms| ms < 0.0),
        stream_resumed_by_client_retransmit,
        phases,
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// Median, p99 (nearest rank) and max of `samples`.
fn spread(samples: &[f64]) -> (f64, f64, f64) {
    let sorted = sorted(samples);
    let rank =
        |fraction: f64| sorted[((fraction * sorted.len() as f64).ceil() as usize).max(1) - 1];
    (sorted[sorted.len() / 2], rank(0.99), sorted[sorted.len() - 1])
}

/// The median of the phase `pick` over the trials that printed it ("-" when none did).
fn phase_median(trials: &[Trial], pick: impl Fn(&Phases) -> Option<f64>) -> String {
    let samples: Vec<f64> = trials.iter().filter_map(|trial| pick(&trial.phases)).collect();
    if samples.is_empty() {
        return "-".into();
    }
    format!("{:.1}", sorted(&samples)[samples.len() / 2])
}

/// The two failover tables: what the clients saw, and where the time went.
fn print_failover_tables(results: &[(String, Vec<Trial>)]) {
    println!();
    println!(
        "| fault | trials | stream gap ms median / p99 / max | request gap ms median / p99 / max | lost / dup / reordered / corrupt bytes | wrong replies | resets | backup won | loser halted | frames after resume | frames into the dead host | stream resumed by the client's retransmission | false failovers before the fault |"
    );
    println!("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, trials) in results {
        let gaps = |pick: fn(&Trial) -> f64| {
            let (median, p99, max) = spread(&trials.iter().map(pick).collect::<Vec<_>>());
            format!("{median:.0} / {p99:.0} / {max:.0}")
        };
        let total = |pick: &dyn Fn(&Trial) -> f64| trials.iter().map(pick).sum::<f64>();
        let damage: Vec<String> =
            (0..4).map(|kind| total(&|trial| trial.stream_damage[kind]).to_string()).collect();
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            trials.len(),
            gaps(|trial| trial.stream_gap_ms),
            gaps(|trial| trial.requests_gap_ms),
            damage.join(" / "),
            total(&|trial| trial.wrong_replies),
            total(&|trial| trial.resets),
            trials.iter().filter(|trial| trial.backup_won).count(),
            trials.iter().filter(|trial| trial.loser_halted).count(),
            total(&|trial| trial.frames_after_resume),
            total(&|trial| trial.frames_into_dead_host),
            trials.iter().filter(|trial| trial.stream_resumed_by_client_retransmit).count(),
            trials.iter().filter(|trial| trial.failed_over_before_fault).count(),
        );
    }
    println!();
    println!(
        "| fault (medians, ms) | last heard | detection | drain | lease wait | arbiter | attach | fault -> live | live -> first guest frame out | live -> first frame in | live -> stream resumed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, trials) in results {
        let columns = [
            phase_median(trials, |phases| phases.last_heard_ms),
            phase_median(trials, |phases| phases.detection_ms),
            phase_median(trials, |phases| phases.drain_ms),
            phase_median(trials, |phases| phases.lease_wait_ms),
            phase_median(trials, |phases| phases.arbiter_ms),
            phase_median(trials, |phases| phases.attach_ms),
            phase_median(trials, |phases| phases.live_ms),
            phase_median(trials, |phases| phases.first_frame_out_ms),
            phase_median(trials, |phases| phases.first_frame_in_ms),
            phase_median(trials, |phases| phases.stream_resumed_ms),
        ];
        println!("| {name} | {} |", columns.join(" | "));
    }
}

/// The value after `flag` in the bench's arguments.
/// What `--false-failovers SECONDS` measured.
struct LoadedRun {
    role_changes: usize,
    captures: usize,
    re_announcements: usize,
    lag_ms: Vec<f64>,
    exits: (Option<i32>, Option<i32>),
    /// The lines behind the counts.
    evidence: Vec<String>,
}

/// A pair on loopback for `seconds` with a stress guest on the primary and a CPU hog per core
/// in the host, with `pair_args` on both sides.
fn loaded_pair(seconds: u64, pair_args: &[&str]) -> LoadedRun {
    use std::sync::atomic::{AtomicBool, Ordering};
    ftvm_tests::require_kvm();
    let arbiter = arbiter_dir("loaded");
    let arbiter = arbiter.to_str().unwrap();
    let channel = "127.0.0.1:7077";
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
        })
        .collect();
    // The guest has a NIC (unused by the stress role) so the backup's inbound watcher runs.
    let lab = Lab::new(2);
    let nets: Vec<String> = (0..2).map(|tap| lab.net_flag_for(tap, 0)).collect();
    let side = |args: &[&str]| {
        let args: Vec<&str> = args.iter().chain(pair_args).copied().collect();
        lab.spawn_in_host(FTVM, &args)
    };
    let backup = side(&["backup", "--listen", channel, "--arbiter", arbiter, "--net", &nets[1]]);
    let cmdline = format!("role=stress seed=11 ms={}", seconds * 1000);
    let primary = side(&[
        "primary",
        "--stats",
        "--backup",
        channel,
        "--arbiter",
        arbiter,
        "--net",
        &nets[0],
        "--cmdline",
        &cmdline,
    ]);
    let limit = Duration::from_secs(seconds + 120);
    let (primary, backup) = (primary.finish_within(limit), backup.finish_within(limit));
    stop.store(true, Ordering::Relaxed);
    hogs.into_iter().for_each(|hog| hog.join().unwrap());
    let count =
        |text: &str, needle: &str| text.lines().filter(|line| line.contains(needle)).count();
    let both = format!("{}{}", primary.stderr, backup.stderr);
    LoadedRun {
        role_changes: count(&both, "role: primary -> ") + count(&both, "role: backup -> "),
        captures: count(&backup.stderr, "the guest's MAC is announced here"),
        re_announcements: count(&primary.stderr, "announcing it again"),
        lag_ms: pair_field(&primary.stderr, "ms "),
        exits: (primary.status, backup.status),
        evidence: both
            .lines()
            .filter(|line| {
                ["role: primary -> ", "role: backup -> ", "presumed dead", "MAC is announced"]
                    .iter()
                    .any(|needle| line.contains(needle))
            })
            .map(str::to_owned)
            .collect(),
    }
}

/// An own disk image of `bytes` full of seeded data at `path` (both sides of a pair start
/// from copies of it).
fn filled_image(path: &str, bytes: u64) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut file = std::fs::File::create(path).unwrap();
    for _ in 0..bytes / chunk.len() as u64 {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
}

/// One `add-backup` of a guest of `mem` running `cmdline` (with the lab's guest network
/// arguments), with an own disk of `own_disk_bytes` full of data if given: a pair in a lab
/// (primary on tap0, backup on tap1, channels on the lab host's loopback), its primary killed,
/// its backup live, a spare (tap2, its disk image empty) added to it; the API's answer.
fn transfer_trial(mem: &str, cmdline: &str, own_disk_bytes: Option<u64>) -> serde_json::Value {
    let lab = Lab::new(3);
    let arbiter = arbiter_dir("transfer");
    let arbiter = arbiter.to_str().unwrap();
    let scratch = ftvm_tests::Scratch::new("transfer-api");
    let socket = format!("{}/live.sock", scratch.path());
    let spare_channel = "127.0.0.1:7079";
    let attachments: Vec<Vec<String>> = (0..3)
        .map(|tap| {
            let mut flags = vec!["--net".to_string(), lab.net_flag_for(tap, 0)];
            if let Some(bytes) = own_disk_bytes {
                let image = format!("{}/disk{tap}.img", scratch.path());
                match tap {
                    0 => filled_image(&image, bytes),
                    1 => {
                        std::fs::copy(format!("{}/disk0.img", scratch.path()), &image).unwrap();
                    }
                    _ => {}
                }
                flags.extend(["--disk".into(), format!("{image},size={bytes},create,mode=own")]);
            }
            flags
        })
        .collect();
    let with = |args: &[&str], tap: usize| -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).chain(attachments[tap].iter().cloned()).collect()
    };
    let spawn = |args: Vec<String>| {
        lab.spawn_in_host(FTVM, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let backup = spawn(with(
        &["backup", "--listen", CHANNEL, "--arbiter", arbiter, "--api-socket", &socket],
        1,
    ));
    let cmdline = format!("{cmdline} {}", Lab::guest_net_args(0));
    let mut primary = spawn(with(
        &[
            "primary",
            "--backup",
            CHANNEL,
            "--arbiter",
            arbiter,
            "--mem",
            mem,
            "--cmdline",
            &cmdline,
        ],
        0,
    ));
    // The guest runs a while before the failover.
    std::thread::sleep(Duration::from_millis(1500));
    primary.kill();
    let live = ftvm_tests::remote::wait_for_role(FTVM, &socket, "live", Duration::from_secs(60));
    let spare =
        spawn(with(&["backup", "--listen", spare_channel, "--arbiter", arbiter, "--spare"], 2));
    let added = live
        .and_then(|()| ftvm_tests::remote::remote(FTVM, &socket, &["add-backup", spare_channel]));
    let (backup, spare) = (backup.stop(), spare.stop());
    added.unwrap_or_else(|error| {
        panic!(
            "add-backup failed: {error}\n--- live\n{}\n--- spare\n{}",
            backup.stderr, spare.stderr
        )
    })
}

/// The `--transfer` table: each guest size and workload, `trials` times.
fn transfer_table(trials: usize) {
    println!(
        "| guest RAM | own disk (full of data) | workload | trials | pause us median / max | sent MiB median | pre-copy rounds median | pages running / paused (median) | disk blocks running / paused (median) | whole transfer ms median |"
    );
    println!("|---|---|---|---:|---|---:|---:|---|---|---:|");
    let idle = ("idle (echo)", "role=echo port=7");
    let stress = ("stress", "role=stress seed=5 ms=600000");
    let configs = [
        ("128M", None, idle),
        ("128M", None, stress),
        ("1G", None, idle),
        ("1G", None, stress),
        ("128M", Some(64u64 << 20), idle),
        ("128M", Some(1u64 << 30), idle),
    ];
    for (mem, own_disk_bytes, (workload, cmdline)) in configs {
        let disk = own_disk_bytes.map_or("none".into(), |bytes| format!("{} MiB", bytes >> 20));
        let reports: Vec<serde_json::Value> = (0..trials)
            .map(|trial| {
                eprintln!("ft bench: transfer {mem} disk {disk} {workload} {}/{trials}", trial + 1);
                transfer_trial(mem, cmdline, own_disk_bytes)
            })
            .collect();
        let spread = |key: &str| {
            let mut values: Vec<f64> =
                reports.iter().filter_map(|report| report[key].as_f64()).collect();
            values.sort_by(f64::total_cmp);
            let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
            (median, values.last().copied().unwrap_or(f64::NAN))
        };
        println!(
            "| {mem} | {disk} | {workload} | {trials} | {:.0} / {:.0} | {:.1} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} |",
            spread("pause_us").0,
            spread("pause_us").1,
            spread("sent_bytes").0 / (1 << 20) as f64,
            spread("rounds").0,
            spread("precopy_pages").0,
            spread("paused_pages").0,
            spread("precopy_disk_blocks").0,
            spread("paused_disk_blocks").0,
            spread("total_ms").0
        );
    }
}

fn flag_value(flag: &str) -> Option<String> {
    std::env::args().skip_while(|arg| arg != flag).nth(1)
}

fn main() {
    let runs = runs_arg(5);
    let trials: usize = flag_value("--trials").and_then(|value| value.parse().ok()).unwrap_or(20);
    let faults: Vec<Fault> = match flag_value("--faults") {
        Some(list) => Fault::ALL
            .into_iter()
            .filter(|fault| list.split(',').any(|name| name == fault.flag()))
            .collect(),
        None => Fault::ALL.to_vec(),
    };
    let failover_only = std::env::args().any(|arg| arg == "--failover-only");
    // Passed to both sides of every failover pair (the heartbeat follows the timeout).
    let timeout = flag_value("--failure-timeout-ms");
    let timeout_ms = timeout.as_deref().map_or(DEFAULT_FAILURE_TIMEOUT_MS, |ms| {
        ms.parse().expect("--failure-timeout-ms takes a number of ms")
    });
    let pair_args: Vec<&str> =
        timeout.iter().flat_map(|ms| ["--failure-timeout-ms", ms.as_str()]).collect();
    if let Some(trials) = flag_value("--transfer") {
        transfer_table(trials.parse().expect("--transfer takes a number of trials"));
        return;
    }
    if let Some(seconds) = flag_value("--false-failovers") {
        let seconds: u64 = seconds.parse().expect("--false-failovers takes a number of seconds");
        let run = loaded_pair(seconds, &pair_args);
        println!(
            "| loaded pair | seconds | failure timeout ms | false failovers | backup took the traffic | primary took it back | backup lag ms median / p99 | exits (primary, backup) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        println!(
            "| stress guest + {} host CPU hogs | {seconds} | {timeout_ms} | {} | {} | {} | {:?} | {:?} |",
            std::thread::available_parallelism().map_or(2, |cores| cores.get()),
            run.role_changes,
            run.captures,
            run.re_announcements,
            run.lag_ms,
            run.exits
        );
        run.evidence.iter().for_each(|line| println!("    {line}"));
        return;
    }
    let mut table = Table::default();
    let baseline = flag_value("--baseline");
    let mut builds = Vec::new();
    if let Some(path) = &baseline {
        builds.push(("before: ", path.as_str()));
    }
    builds.push(("", FTVM));
    for run in 0..if failover_only { 0 } else { runs } {
        eprintln!("ft bench: run {}/{runs}", run + 1);
        for (label, exe) in &builds {
            for layout in [Layout::OneHost, Layout::BackupOnItsOwnCore] {
                throughput_rows(&mut table, label, exe, layout);
            }
        }
    }
    let mut results: Vec<(String, Vec<Trial>)> = Vec::new();
    for fault in &faults {
        for (label, exe) in &builds {
            let mut done = Vec::new();
            for trial in 0..trials {
                eprintln!("ft bench: {label}{} {}/{trials}", fault.name(), trial + 1);
                done.push(failover_trial(exe, *fault, &pair_args, timeout_ms));
            }
            if !done.is_empty() {
                results.push((format!("{label}{}", fault.name()), done));
            }
        }
    }
    if !failover_only {
        table.print(runs);
    }
    // `--trials 0`: the throughput rows only.
    if !results.is_empty() {
        print_failover_tables(&results);
    }
}
