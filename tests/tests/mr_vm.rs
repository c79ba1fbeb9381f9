//! MapReduce in VMs: a GFS master and two chunkservers (each with its own
//! disk image), a MapReduce coordinator, two workers (each with a disk for
//! its intermediate data) and a job VM, seven VMs on one bridge. The job VM
//! writes two text files into GFS, submits a word count with two reduce
//! tasks, waits for it, reads the output files back, compares them with a
//! word count it computes itself and exits 0 with `mr job ok`.
use std::time::{Duration, Instant};

use ftvm_tests::netns::Lab;
use ftvm_tests::{stop_all, Reaped};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
/// The job fails itself after this long (its own `limit_s=`).
const JOB_LIMIT_S: u64 = 30;
/// A job VM still running this long after its start is killed (a hang).
const WATCHDOG: Duration = Duration::from_secs(JOB_LIMIT_S + 10);
/// The cluster settings every node must agree on: 256 KiB chunks, so the
/// two 300 KiB input files make four map tasks.
const CLUSTER: &str = "port=7100 replicas=2 chunk_kib=256 lease_ms=2000";
/// Node ids: GFS below MapReduce, the coordinator the lowest MapReduce id,
/// the job the highest (streams are dialled by the higher id).
const MASTER_ID: u32 = 1;
const CHUNKSERVER_IDS: [u32; 2] = [2, 3];
const COORDINATOR_ID: u32 = 4;
const WORKER_IDS: [u32; 2] = [5, 6];
const JOB_ID: u32 = 7;

/// The VM of node `id` runs on tap `id - 1`.
fn tap(id: u32) -> usize {
    id as usize - 1
}

/// `ID:ADDRESS` of node `id`.
fn peer(id: u32) -> String {
    format!("{id}:{}", Lab::guest_ip(tap(id)))
}

fn spawn(lab: &Lab, id: u32, disk: Option<&str>, cmdline: &str) -> Reaped {
    let net = lab.net_flag(tap(id));
    let mut args = vec!["run", "--mem", "128M", "--net", net.as_str()];
    if let Some(disk) = disk {
        args.extend(["--disk", disk]);
    }
    args.extend(["--cmdline", cmdline]);
    lab.spawn_in_host(FTVM, &args)
}

#[test]
fn a_job_vm_runs_word_count_on_coordinator_and_worker_vms_over_gfs_vms() {
    let lab = Lab::new(7);
    let dir = std::env::temp_dir().join(format!("ftvm-mr-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = |name: &str, size: &str| format!("{},size={size},create", dir.join(name).display());

    let master = spawn(
        &lab,
        MASTER_ID,
        Some(&disk("master.img", "16M")),
        &format!("role=gfs-master node={MASTER_ID} {} {CLUSTER}", Lab::guest_net_args(0)),
    );
    let mut services = vec![master];
    for (id, other) in
        [(CHUNKSERVER_IDS[0], CHUNKSERVER_IDS[1]), (CHUNKSERVER_IDS[1], CHUNKSERVER_IDS[0])]
    {
        let cmdline = format!(
            "role=gfs-chunkserver node={id} {} master={} peers={} {CLUSTER}",
            Lab::guest_net_args(tap(id)),
            peer(MASTER_ID),
            peer(other)
        );
        services.push(spawn(
            &lab,
            id,
            Some(&disk(&format!("chunkserver{id}.img"), "32M")),
            &cmdline,
        ));
    }
    let gfs_nodes = format!(
        "master={} chunkservers={},{}",
        peer(MASTER_ID),
        peer(CHUNKSERVER_IDS[0]),
        peer(CHUNKSERVER_IDS[1])
    );
    let coordinator_cmdline = format!(
        "role=mr-coordinator node={COORDINATOR_ID} {} {gfs_nodes} {CLUSTER}",
        Lab::guest_net_args(tap(COORDINATOR_ID))
    );
    services.push(spawn(&lab, COORDINATOR_ID, None, &coordinator_cmdline));
    for (index, id) in WORKER_IDS.into_iter().enumerate() {
        // Each worker lists the workers below it: it dials them.
        let workers: Vec<String> = WORKER_IDS[..index].iter().map(|id| peer(*id)).collect();
        let cmdline = format!(
            "role=mr-worker node={id} {} coordinator={} {gfs_nodes} workers={} {CLUSTER}",
            Lab::guest_net_args(tap(id)),
            peer(COORDINATOR_ID),
            workers.join(",")
        );
        services.push(spawn(&lab, id, Some(&disk(&format!("worker{id}.img"), "32M")), &cmdline));
    }
    let job_cmdline = format!(
        "role=mr-job node={JOB_ID} {} coordinator={} {gfs_nodes} files=2 kib=300 reduces=2 \
         seed=7 limit_s={JOB_LIMIT_S} {CLUSTER}",
        Lab::guest_net_args(tap(JOB_ID)),
        peer(COORDINATOR_ID)
    );
    let started = Instant::now();
    let job = spawn(&lab, JOB_ID, None, &job_cmdline);

    let finished = job.finish_within(WATCHDOG);
    let elapsed = started.elapsed();

    let (others, consoles) = stop_all(services);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        finished.status,
        Some(0),
        "the job VM exits 0 (after {elapsed:?}): {}{}\n{consoles}",
        finished.stdout,
        finished.stderr
    );
    assert!(finished.stdout.contains("mr job ok"), "{}\n{consoles}", finished.stdout);
    for vm in &others {
        assert_eq!(vm.status, Some(130), "stopped by SIGTERM, not dead before: {consoles}");
    }
    assert!(others[3].stdout.contains("JobFinished"), "the coordinator saw it: {consoles}");
    // Shown with --nocapture.
    println!("job after {elapsed:?}:\n{}{}\n{consoles}", finished.stdout, finished.stderr);
}
