//! The backup's listener against strangers and mismatched primaries: a connection that says
//! nothing, garbage, a wrong key, pair or generation, or another version is refused and named,
//! never accepted, and never keeps the real primary out; after pairing everyone is refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logchannel::channel::handshake::MAGIC;
use logchannel::{BackupListener, ChannelConfig, ChannelError, Credentials, Devices, PrimaryLink};

fn credentials() -> Credentials {
    Credentials { pair_id: "pair-a".into(), key: [1; 32], generation: 3 }
}

fn config() -> ChannelConfig {
    ChannelConfig { handshake_timeout_ms: 500, connect_timeout_ms: 2_000, ..Default::default() }
}

/// A listening backup whose refusals are collected.
fn listening() -> (SocketAddr, BackupListener, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    let own = Devices { net_mac: None, disk_bytes: Some(1 << 20), disk_own: false };
    let check = move |hello: &logchannel::Hello| {
        if hello.devices == own {
            Ok(())
        } else {
            Err(format!("devices {:?} differ from {own:?}", hello.devices))
        }
    };
    let backup = BackupListener::start(listener, &config(), &credentials(), check, move |line| {
        lines.lock().unwrap().push(line)
    })
    .unwrap();
    (addr, backup, log)
}

fn connect(addr: SocketAddr, credentials: &Credentials) -> Result<PrimaryLink, ChannelError> {
    PrimaryLink::connect(
        addr,
        &config(),
        credentials,
        Devices { net_mac: None, disk_bytes: Some(1 << 20), disk_own: false },
    )
}

fn wait_for_line(log: &Mutex<Vec<String>>, needle: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(line) = log.lock().unwrap().iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no log line with {needle:?}: {log:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn strangers_are_refused_and_named_and_the_real_primary_still_gets_in() {
    let (addr, backup, log) = listening();
    // Says nothing, holding its connection open past the real primary's arrival.
    let silent = TcpStream::connect(addr).unwrap();
    // Garbage, and an HTTP probe.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(&[0xde; 64]).unwrap();
    let mut http = TcpStream::connect(addr).unwrap();
    http.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // Another protocol version: told ours in the reply preamble.
    let mut old = TcpStream::connect(addr).unwrap();
    old.write_all(&[&MAGIC[..], &1u16.to_le_bytes()].concat()).unwrap();
    let mut reply = [0u8; 8];
    old.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..6], MAGIC);

    let start = Instant::now();
    let _primary = connect(addr, &credentials()).expect("the real primary is accepted");
    let accepted = backup.next(Duration::from_secs(5)).expect("handed to the backup");
    assert!(start.elapsed() < Duration::from_millis(400), "the silent stranger delayed it");
    assert_eq!(accepted.hello.generation, 3);

    let garbage_addr = garbage.local_addr().unwrap().to_string();
    assert!(wait_for_line(&log, &garbage_addr).contains("not an ftvm log channel"));
    wait_for_line(&log, &http.local_addr().unwrap().to_string());
    assert!(wait_for_line(&log, &old.local_addr().unwrap().to_string()).contains("version 1"));
    let silent_line = wait_for_line(&log, &silent.local_addr().unwrap().to_string());
    assert!(silent_line.contains("no answer within the handshake timeout"), "{silent_line}");

    // After pairing: refused at once, named, and never handed out.
    let late = TcpStream::connect(addr).unwrap();
    let late_line = wait_for_line(&log, &late.local_addr().unwrap().to_string());
    assert!(late_line.contains("already paired"), "{late_line}");
    let again = connect(addr, &credentials()).err().expect("a second primary is refused");
    assert!(
        matches!(again, ChannelError::Refused { .. } | ChannelError::Handshake { .. }),
        "{again}"
    );
    assert!(backup.next(Duration::from_millis(200)).is_none());
}

#[test]
fn a_primary_of_another_key_pair_or_generation_is_refused_and_both_sides_say_why() {
    let (addr, backup, log) = listening();
    let cases = [
        (Credentials { key: [2; 32], ..credentials() }, "different keys"),
        (Credentials { pair_id: "pair-b".into(), ..credentials() }, "pair pair-b"),
        (Credentials { generation: 4, ..credentials() }, "generation 4, this side generation 3"),
    ];
    for (wrong, why) in cases {
        let error = connect(addr, &wrong).err().expect("refused");
        let ChannelError::Refused { reason, .. } = &error else { panic!("{error}") };
        assert!(reason.contains(why.split(", this").next().unwrap()), "{reason}");
        let line = wait_for_line(&log, why.split(", this").next().unwrap());
        assert!(line.starts_with("refused a connection from 127.0.0.1:"), "{line}");
    }
    // A primary whose guest has other devices than this backup's attachments.
    let error = PrimaryLink::connect(addr, &config(), &credentials(), Devices::default())
        .err()
        .expect("refused");
    assert!(error.to_string().contains("devices"), "{error}");
    assert!(backup.next(Duration::from_millis(200)).is_none(), "none of them was accepted");
    // The real one still pairs.
    let _primary = connect(addr, &credentials()).unwrap();
    assert!(backup.next(Duration::from_secs(5)).is_some());
}
