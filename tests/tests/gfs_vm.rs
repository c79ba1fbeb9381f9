//! GFS in VMs: a master, two chunkservers (each with its own disk image) and a
//! scripted client, four VMs on one bridge. The client creates a file, writes
//! a seeded pattern through the chunkservers with replication goal 2, reads it
//! back and verifies it, and exits 0 with `gfs client ok`. A second test runs
//! the master as an FT pair (DESIGN §6: the single points run as pairs) and
//! kills its primary while the client writes.
use std::time::{Duration, Instant};

use ftvm_tests::netns::Lab;
use ftvm_tests::{stop_all, Reaped};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
/// The client fails itself after this long (its own `limit_s=`).
const CLIENT_LIMIT_S: u64 = 40;
/// A client VM still running this long after its start is killed (a hang).
const WATCHDOG: Duration = Duration::from_secs(CLIENT_LIMIT_S + 20);
/// The cluster settings every node must agree on.
const CLUSTER: &str = "port=7100 replicas=2 chunk_kib=1024 lease_ms=2000";
const MASTER_ID: u32 = 1;
const CLIENT_ID: u32 = 9;

/// `ID:ADDRESS` of the VM on `tapN`.
fn peer(id: u32, tap: usize) -> String {
    format!("{id}:{}", Lab::guest_ip(tap))
}

fn spawn(lab: &Lab, tap: usize, disk: Option<&str>, cmdline: &str) -> Reaped {
    let net = lab.net_flag(tap);
    let mut args = vec!["run", "--mem", "256M", "--net", net.as_str()];
    if let Some(disk) = disk {
        args.extend(["--disk", disk]);
    }
    args.extend(["--cmdline", cmdline]);
    lab.spawn_in_host(FTVM, &args)
}

/// How the master runs.
enum Master {
    /// One VM.
    Plain,
    /// An FT pair whose primary is SIGKILLed this long after the client starts.
    PairKilledAfter(Duration),
}

#[test]
fn a_client_vm_writes_and_reads_back_a_file_through_master_and_chunkserver_vms() {
    cluster(Master::Plain, 4);
}

#[test]
fn the_master_as_an_ft_pair_survives_its_primary_being_killed_mid_write() {
    cluster(Master::PairKilledAfter(Duration::from_millis(2600)), 16);
}

fn cluster(master_mode: Master, mib: u32) {
    // tap0: master (primary), tap1/tap2: chunkservers, tap3: client, tap4: master backup.
    let lab = Lab::new(5);
    let dir = std::env::temp_dir().join(format!("ftvm-gfs-vm-{}-{mib}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = |name: &str, size: &str| format!("{},size={size},create", dir.join(name).display());

    let master_disk = disk("master.img", "16M");
    let master_cmdline =
        format!("role=gfs-master node={MASTER_ID} {} {CLUSTER}", Lab::guest_net_args(0));
    let arbiter = dir.join("arbiter");
    std::fs::create_dir_all(&arbiter).unwrap();
    ftvm_tests::init_pair(FTVM, &arbiter);
    let arbiter = arbiter.to_str().unwrap().to_string();
    let (mut master, master_backup) = match master_mode {
        Master::Plain => (spawn(&lab, 0, Some(&master_disk), &master_cmdline), None),
        Master::PairKilledAfter(_) => {
            let backup = lab.spawn_in_host(
                FTVM,
                &[
                    "backup",
                    "--listen",
                    "127.0.0.1:7000",
                    "--arbiter",
                    &arbiter,
                    "--net",
                    &lab.net_flag_for(4, 0),
                    "--disk",
                    &master_disk,
                ],
            );
            let primary = lab.spawn_in_host(
                FTVM,
                &[
                    "primary",
                    "--backup",
                    "127.0.0.1:7000",
                    "--arbiter",
                    &arbiter,
                    "--mem",
                    "256M",
                    "--net",
                    &lab.net_flag_for(0, 0),
                    "--disk",
                    &master_disk,
                    "--cmdline",
                    &master_cmdline,
                ],
            );
            (primary, Some(backup))
        }
    };
    let chunkservers: Vec<Reaped> = [(2u32, 1usize, 3u32, 2usize), (3, 2, 2, 1)]
        .into_iter()
        .map(|(id, tap, other_id, other_tap)| {
            let image = disk(&format!("chunkserver{id}.img"), "64M");
            let cmdline = format!(
                "role=gfs-chunkserver node={id} {} master={} peers={} {CLUSTER}",
                Lab::guest_net_args(tap),
                peer(MASTER_ID, 0),
                peer(other_id, other_tap)
            );
            spawn(&lab, tap, Some(&image), &cmdline)
        })
        .collect();
    let client_cmdline = format!(
        "role=gfs-client node={CLIENT_ID} {} master={} peers={},{} mib={mib} seed=7 \
         limit_s={CLIENT_LIMIT_S} {CLUSTER}",
        Lab::guest_net_args(3),
        peer(MASTER_ID, 0),
        peer(2, 1),
        peer(3, 2)
    );
    let started = Instant::now();
    let client = spawn(&lab, 3, None, &client_cmdline);

    if let Master::PairKilledAfter(delay) = master_mode {
        std::thread::sleep(delay);
        master.kill();
    }
    let finished = client.finish_within(WATCHDOG);
    let elapsed = started.elapsed();

    let master_end = match master_backup {
        // The killed primary's output is of no interest; the backup took over.
        Some(backup) => {
            drop(master);
            backup
        }
        None => master,
    };
    let (others, consoles) = stop_all(std::iter::once(master_end).chain(chunkservers));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        finished.status,
        Some(0),
        "the client VM exits 0 (after {elapsed:?}): {}{}\n{consoles}",
        finished.stdout,
        finished.stderr
    );
    assert!(finished.stdout.contains("gfs client ok"), "{}\n{consoles}", finished.stdout);
    for vm in &others {
        assert_eq!(vm.status, Some(130), "stopped by SIGTERM, not dead before: {consoles}");
    }
    for vm in &others[1..] {
        assert!(vm.stdout.contains(" ready"), "{consoles}");
    }
    if matches!(master_mode, Master::PairKilledAfter(_)) {
        assert!(
            others[0].stderr.contains("role: backup -> live"),
            "the master's backup took over: {consoles}"
        );
    }
    // Shown with --nocapture.
    println!("client after {elapsed:?}:\n{}{}\n{consoles}", finished.stdout, finished.stderr);
    // Replication goal 2 on two chunkservers: each holds every 1 MiB chunk.
    for (index, vm) in others.iter().enumerate().skip(1) {
        let id = index + 1;
        let full = format!("node {id} holds {mib} replicas, {} bytes", u64::from(mib) << 20);
        assert!(vm.stdout.contains(&full), "chunkserver {id} has every chunk: {consoles}");
    }
}
