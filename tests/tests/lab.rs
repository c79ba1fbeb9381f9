//! `ftvm lab` and the host clients end to end: a lab comes up, files go
//! into GFS and come back, a job runs, hosts crash under the services, and
//! the lab goes away without a trace. Each test's lab lives in a state
//! directory of its own and is taken down even when the test fails.
use std::time::{Duration, Instant};

use ftvm_tests::lab::{counts_in, text, word_count, TestLab, SPREAD_LAB};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

#[test]
fn the_built_in_lab_serves_gfs_and_mapreduce_to_host_clients_and_survives_a_host_crash() {
    let lab = TestLab::up(FTVM, None);
    let status = lab.ok(&["lab", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let vms = status["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 8, "{status}");
    let master = vms.iter().find(|vm| vm["name"] == "gfs-master").unwrap();
    assert_eq!(master["live_on"], "h1", "{status}");
    assert_eq!(master["ft_pair"], true, "{status}");

    // put / ls / get: 3 MiB, three chunks.
    let book = text(7, 3 << 20);
    std::fs::write(lab.file("book.txt"), &book).unwrap();
    let put = lab.ok(&["gfs", "put", lab.file("book.txt").to_str().unwrap(), "/data/book.txt"]);
    assert!(put.contains("put /data/book.txt: 3145"), "{put}");
    assert!(lab.ok(&["gfs", "ls"]).lines().any(|line| line == "/data/book.txt"));
    lab.ok(&["gfs", "get", "/data/book.txt", lab.file("back.txt").to_str().unwrap()]);
    assert!(std::fs::read(lab.file("back.txt")).unwrap() == book, "get returns what put stored");

    // append: two records land whole, at the offsets GFS reports.
    for (name, record) in [("r1", "first record\n"), ("r2", "second record\n")] {
        std::fs::write(lab.file(name), record).unwrap();
        let said = lab.ok(&["gfs", "append", lab.file(name).to_str().unwrap(), "/logs/events"]);
        let offset: usize = said.trim().rsplit(' ').next().unwrap().parse().unwrap();
        lab.ok(&["gfs", "get", "/logs/events", lab.file("events").to_str().unwrap()]);
        let events = std::fs::read(lab.file("events")).unwrap();
        assert_eq!(&events[offset..offset + record.len()], record.as_bytes(), "{said}");
    }

    // snapshot, then rm of the original: the snapshot keeps the data.
    lab.ok(&["gfs", "snapshot", "/data/book.txt", "/backup/book.txt"]);
    lab.ok(&["gfs", "rm", "/data/book.txt"]);
    let listing = lab.ok(&["gfs", "ls"]);
    assert!(
        !listing.contains("/data/book.txt") && listing.contains("/backup/book.txt"),
        "{listing}"
    );
    let missing = lab.ftvm(&["gfs", "get", "/data/book.txt", lab.file("gone").to_str().unwrap()]);
    assert_eq!(missing.status, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("/data/book.txt does not exist in GFS"), "{}", missing.stderr);
    lab.ok(&["gfs", "get", "/backup/book.txt", lab.file("snap.txt").to_str().unwrap()]);
    assert!(std::fs::read(lab.file("snap.txt")).unwrap() == book, "the snapshot has the data");

    // mr run: word count of the snapshot matches the host's.
    let out = lab.file("counts");
    let job = lab.ok(&[
        "mr",
        "run",
        "wc",
        "/backup/book.txt",
        "--out",
        out.to_str().unwrap(),
        "--reducers",
        "2",
    ]);
    assert!(job.contains("2 output files"), "{job}");
    assert_eq!(counts_in(&out), word_count(&book), "{job}");

    // A crash of the master's primary host: its backup on h3 goes live and
    // the clients carry on.
    let killed = lab.ok(&["lab", "kill", "h1"]);
    assert!(killed.contains("gfs-master (primary)"), "{killed}");
    lab.ok(&["gfs", "get", "/backup/book.txt", lab.file("after.txt").to_str().unwrap()]);
    assert!(std::fs::read(lab.file("after.txt")).unwrap() == book, "{}", lab.logs());
    let status: serde_json::Value =
        serde_json::from_str(&lab.ok(&["lab", "status", "--json"])).unwrap();
    let master =
        status["vms"].as_array().unwrap().iter().find(|vm| vm["name"] == "gfs-master").unwrap();
    assert_eq!(master["live_on"], "h3", "{status}");

    // down removes every namespace and the state; a client then says there is no lab.
    let prefix = status["namespaces_prefix"].as_str().unwrap().to_string();
    lab.ok(&["lab", "down"]);
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&prefix), "namespaces left");
    assert!(!lab.state.exists(), "state left");
    let no_lab = lab.ftvm(&["gfs", "ls"]);
    assert_eq!(no_lab.status, Some(1));
    assert!(
        no_lab.stderr.contains("no lab is running") && no_lab.stderr.contains("ftvm lab up"),
        "{}",
        no_lab.stderr
    );
}

/// The latest `holds N replicas` a chunkserver printed.
fn replicas_held(console: &str) -> Option<u64> {
    console.lines().rev().find_map(|line| {
        let rest = line.split(" holds ").nth(1)?;
        rest.split(' ').next()?.parse().ok()
    })
}

#[test]
fn a_job_survives_a_chunkserver_and_worker_host_crashing_mid_job_and_chunks_are_re_replicated() {
    let lab = TestLab::up(FTVM, Some(SPREAD_LAB));
    let input = text(11, 12 << 20);
    std::fs::write(lab.file("input.txt"), &input).unwrap();
    lab.ok(&["gfs", "put", lab.file("input.txt").to_str().unwrap(), "/in/input.txt"]);
    let out = lab.file("counts");
    let job = lab.spawn(&["mr", "run", "wc", "/in/input.txt", "--out", out.to_str().unwrap()]);

    // Crash h2 (cs-a, worker-a: node 6) once worker-a has finished a map:
    // its output is lost with it and must be computed again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lab.console("coordinator", "plain").contains("on worker 6: Done") {
        assert!(Instant::now() < deadline, "worker-a never finished a map:\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = lab.ok(&["lab", "kill", "h2"]);
    assert!(killed.contains("cs-a") && killed.contains("worker-a"), "{killed}");

    let finished = job.finish_within(Duration::from_secs(120));
    assert_eq!(finished.status, Some(0), "{}{}\n{}", finished.stdout, finished.stderr, lab.logs());
    assert!(finished.stdout.contains("maps re-executed"), "{}", finished.stdout);
    assert_eq!(counts_in(&out), word_count(&input), "{}", finished.stdout);

    // Replication goal 2 with two chunkservers left: each must come to hold
    // every chunk (input and output), copied from the surviving replicas.
    let chunks = 12 + 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: Vec<Option<u64>> =
            ["cs-b", "cs-c"].iter().map(|vm| replicas_held(&lab.console(vm, "plain"))).collect();
        if held.iter().all(|count| count.is_some_and(|count| count >= chunks)) {
            break;
        }
        assert!(Instant::now() < deadline, "not re-replicated: {held:?}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A plain master that dies takes GFS with it: clients say so at once.
    lab.ok(&["lab", "kill", "master"]);
    let down = lab.ftvm(&["gfs", "ls"]);
    assert_eq!(down.status, Some(1), "{down:?}");
    assert!(down.stderr.contains("gfs-master `master` (node 1) is down"), "{}", down.stderr);
}

#[test]
fn down_removes_a_lab_whose_state_file_was_lost() {
    let tiny = "[[host]]\nname = \"h1\"\n\
        [[vm]]\nname = \"master\"\nrole = \"gfs-master\"\nhost = \"h1\"\n\
        [[vm]]\nname = \"cs\"\nrole = \"gfs-chunkserver\"\nhost = \"h1\"\n";
    let lab = TestLab::up(FTVM, Some(tiny));
    let status: serde_json::Value =
        serde_json::from_str(&lab.ok(&["lab", "status", "--json"])).unwrap();
    let prefix = status["namespaces_prefix"].as_str().unwrap().to_string();
    let pids: Vec<u64> = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|vm| {
            vm["sides"].as_array().unwrap().iter().map(|side| side["pid"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(pids.len(), 2, "{status}");
    // The lab's own record is gone (as after a crash of `lab up` before it wrote it).
    std::fs::remove_file(lab.state.join("lab.json")).unwrap();
    let down = lab.ok(&["lab", "down"]);
    assert!(down.contains("removed"), "{down}");
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&prefix), "namespaces left");
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
        });
        assert!(!alive, "VMM {pid} still runs");
    }
}
