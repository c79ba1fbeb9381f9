//! One test suite over [`ArbiterBackend`], run against both backends: the shared directory
//! and a real etcd (started per test on loopback; the test fails naming Debian's
//! `etcd-server` package if the binary is missing). Each property is a function over a
//! [`Fixture`], called once per backend: exactly one winner per generation among racing
//! callers, losers learn the winner's name, a win hidden by a lost reply is still a win,
//! unreachable storage is retried until it answers, configuration errors say what to fix, a
//! foreign record is never a win, and the pair's identity (init, load, next) is the same on both.
//! A few properties only one backend has follow at the end.

#[path = "support/etcd_server.rs"]
mod etcd_server;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use etcd_server::EtcdServer;
use storage::arbiter::{
    Arbiter, ArbiterBackend, ArbiterError, ArbiterLocation, EtcdArbiter, EtcdError, Verdict,
};
use storage::pair::PairError;

/// Where the backends under test live.
enum Fixture {
    Dir(tempfile::TempDir),
    Etcd(EtcdServer),
}

impl Fixture {
    fn dir() -> Fixture {
        Fixture::Dir(tempfile::tempdir().unwrap())
    }

    fn etcd() -> Fixture {
        Fixture::Etcd(EtcdServer::start())
    }

    /// How `name`'s arbiter is named on the command line.
    fn location(&self, name: &str) -> String {
        match self {
            Fixture::Dir(dir) => dir.path().join(name).display().to_string(),
            Fixture::Etcd(server) => server.url(&format!("/ftvm-test/{name}")),
        }
    }

    /// A fresh arbiter named `name` (a directory made for it, or a prefix of its own).
    fn backend(&self, name: &str) -> Arc<dyn ArbiterBackend> {
        if let Fixture::Dir(dir) = self {
            fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        let location: ArbiterLocation = self.location(name).parse().unwrap();
        Arc::from(location.open())
    }

    /// Writes `bytes` as `generation`'s record without the arbiter (a foreign record).
    fn write_raw_record(&self, name: &str, generation: u64, bytes: &[u8]) {
        match self {
            Fixture::Dir(dir) => {
                fs::write(dir.path().join(name).join(format!("generation-{generation}")), bytes)
                    .unwrap()
            }
            Fixture::Etcd(server) => {
                use base64::Engine as _;
                let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
                let key = format!("/ftvm-test/{name}/generation-{generation}");
                let body = serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(bytes) });
                let agent: ureq::Agent = ureq::Agent::config_builder().proxy(None).build().into();
                agent
                    .post(&format!("http://{}/v3/kv/put", server.endpoint()))
                    .send(body.to_string())
                    .unwrap();
            }
        }
    }

    /// Makes `name`'s storage unreachable (the directory moved away, etcd stopped).
    fn cut(&mut self, name: &str) {
        match self {
            Fixture::Dir(dir) => {
                fs::rename(dir.path().join(name), dir.path().join(format!("{name}.away"))).unwrap()
            }
            Fixture::Etcd(server) => server.stop(),
        }
    }

    /// Undoes [`Fixture::cut`].
    fn restore(&mut self, name: &str) {
        match self {
            Fixture::Dir(dir) => {
                fs::rename(dir.path().join(format!("{name}.away")), dir.path().join(name)).unwrap()
            }
            Fixture::Etcd(server) => server.restart(),
        }
    }
}

/// A backend with a pair in it (the etcd records name the pair).
fn with_pair(fixture: &Fixture, name: &str) -> Arc<dyn ArbiterBackend> {
    let arbiter = fixture.backend(name);
    arbiter.init_pair().unwrap();
    arbiter
}

// ---- The properties -------------------------------------------------------------------------

/// Races `sides` threads on each of `trials` generations; checks every generation has exactly
/// one winner and that every loser names it.
fn race(fixture: &Fixture, sides: usize, trials: u64) {
    let arbiter = with_pair(fixture, "race");
    for generation in 1..=trials {
        let barrier = Arc::new(Barrier::new(sides));
        let handles: Vec<_> = (0..sides)
            .map(|side| {
                let (arbiter, barrier) = (Arc::clone(&arbiter), Arc::clone(&barrier));
                thread::spawn(move || {
                    let holder = format!("side-{side}");
                    barrier.wait();
                    (holder.clone(), arbiter.try_set(generation, &holder).unwrap())
                })
            })
            .collect();
        let outcomes: Vec<(String, Verdict)> =
            handles.into_iter().map(|handle| handle.join().unwrap()).collect();
        let winners: Vec<&String> = outcomes
            .iter()
            .filter(|(_, verdict)| *verdict == Verdict::Won)
            .map(|(holder, _)| holder)
            .collect();
        assert_eq!(winners.len(), 1, "generation {generation}: winners {winners:?}");
        for (holder, verdict) in &outcomes {
            if let Verdict::Lost { holder: winner } = verdict {
                assert_eq!(winner, winners[0], "{holder} was told the wrong winner");
            }
        }
        assert_eq!(arbiter.holder(generation).unwrap().as_ref(), Some(winners[0]));
        // Asking again gives the same answer.
        assert_eq!(
            arbiter.try_set(generation, "late").unwrap(),
            Verdict::Lost { holder: winners[0].clone() }
        );
    }
}

/// Separate arbiter objects (as on two hosts) racing: still one winner.
fn race_between_hosts(fixture: &Fixture) {
    let location = fixture.location("hosts");
    with_pair(fixture, "hosts");
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|side| {
            let (location, barrier) = (location.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let arbiter = location.parse::<ArbiterLocation>().unwrap().open();
                barrier.wait();
                arbiter.try_set(1, &format!("host-{side}")).unwrap()
            })
        })
        .collect();
    let verdicts: Vec<Verdict> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
    let won = verdicts.iter().filter(|verdict| **verdict == Verdict::Won).count();
    assert_eq!(won, 1, "{verdicts:?}");
}

fn generations_are_independent(fixture: &Fixture) {
    let arbiter = with_pair(fixture, "generations");
    assert_eq!(arbiter.holder(1).unwrap(), None);
    assert_eq!(arbiter.try_set(1, "primary").unwrap(), Verdict::Won);
    assert_eq!(arbiter.try_set(2, "backup").unwrap(), Verdict::Won);
    assert_eq!(arbiter.try_set(1, "backup").unwrap(), Verdict::Lost { holder: "primary".into() });
    assert!(matches!(arbiter.try_set(3, "two\nlines"), Err(ArbiterError::InvalidHolder { .. })));
    assert_eq!(arbiter.holder(3).unwrap(), None);
}

/// An attempt whose reply was lost set the record: the caller's next attempt (same tokens)
/// must see a win, not a loss to itself.
fn a_win_hidden_by_a_lost_reply_is_a_win(fixture: &Fixture) {
    let arbiter = with_pair(fixture, "hidden");
    let mut my_tokens = Vec::new();
    assert_eq!(arbiter.attempt(5, "backup", &mut my_tokens).unwrap(), Verdict::Won);
    // The reply "was lost": ask again with the same tokens.
    assert_eq!(arbiter.attempt(5, "backup", &mut my_tokens).unwrap(), Verdict::Won);
    // Someone else, with other tokens, lost.
    let lost = arbiter.attempt(5, "backup", &mut Vec::new()).unwrap();
    assert_eq!(lost, Verdict::Lost { holder: "backup".into() });
}

/// Unreachable storage is an error retrying may fix (no `fix`), retried by `set_with_retry`
/// until the storage is back; then the verdict comes.
fn unreachable_storage_is_retried_until_it_answers(mut fixture: Fixture) {
    let arbiter = with_pair(&fixture, "outage");
    assert!(arbiter.probe().is_ok());
    fixture.cut("outage");
    let error = arbiter.try_set(1, "backup").unwrap_err();
    assert!(error.is_transient(), "{error}");
    let failures = Arc::new(AtomicU64::new(0));
    let waiter = {
        let (arbiter, failures) = (Arc::clone(&arbiter), Arc::clone(&failures));
        thread::spawn(move || {
            arbiter.set_with_retry(1, "backup", Duration::from_millis(5), &mut |error| {
                assert!(error.is_transient(), "{error}");
                failures.fetch_add(1, Ordering::SeqCst);
                false
            })
        })
    };
    while failures.load(Ordering::SeqCst) < 3 {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(!waiter.is_finished(), "returned while the storage was unreachable");
    fixture.restore("outage");
    assert_eq!(waiter.join().unwrap().unwrap(), Verdict::Won);
    assert_eq!(arbiter.holder(1).unwrap().as_deref(), Some("backup"));
}

fn giving_up_names_the_arbiter_and_never_wins(mut fixture: Fixture) {
    let arbiter = with_pair(&fixture, "give-up");
    fixture.cut("give-up");
    let mut calls = 0;
    let error = arbiter
        .set_with_retry(4, "primary", Duration::from_millis(1), &mut |_| {
            calls += 1;
            calls == 3
        })
        .unwrap_err();
    let ArbiterError::GaveUp { attempts, generation, .. } = &error else {
        panic!("expected GaveUp, got {error}");
    };
    assert_eq!((*attempts, *generation), (3, 4));
    let message = error.to_string();
    assert!(message.contains(&arbiter.location()), "{message}");
    assert!(message.contains("generation 4"), "{message}");
    fixture.restore("give-up");
    assert_eq!(arbiter.holder(4).unwrap(), None, "a given-up attempt set nothing");
}

fn a_foreign_record_is_an_error_not_a_win(fixture: &Fixture) {
    let arbiter = with_pair(fixture, "foreign");
    fixture.write_raw_record("foreign", 2, b"someone else's file");
    for _ in 0..2 {
        let error = arbiter
            .set_with_retry(2, "backup", Duration::from_millis(1), &mut |_| panic!("retried"))
            .unwrap_err();
        assert!(matches!(error, ArbiterError::CorruptRecord { .. }), "{error}");
        assert!(!error.is_transient());
        assert!(error.to_string().contains("generation-2"), "{error}");
    }
}

fn the_pair_identity_is_created_once_and_advanced_only_when_decided(fixture: &Fixture) {
    let arbiter = fixture.backend("identity");
    let location = arbiter.location();
    let missing = arbiter.load_pair(None).unwrap_err();
    assert!(matches!(missing, PairError::Missing { .. }), "{missing}");
    assert!(missing.to_string().contains(&format!("ftvm pair init {location}")), "{missing}");
    let created = arbiter.init_pair().unwrap();
    assert_eq!(created.generation, 1);
    assert_eq!(arbiter.load_pair(None).unwrap(), created);
    assert!(matches!(arbiter.init_pair(), Err(PairError::Exists { generation: 1, .. })));
    assert!(matches!(arbiter.next_pair(), Err(PairError::Undecided { generation: 1, .. })));
    arbiter.try_set(1, "backup@b").unwrap();
    let next = arbiter.next_pair().unwrap();
    assert_eq!((next.id.clone(), next.generation, next.key), (created.id.clone(), 2, created.key));
    assert_eq!(arbiter.load_pair(None).unwrap(), next);
    // The key from a file of its own.
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("pair.key");
    fs::write(&key_file, format!("ftvm-pair-key 1\n{}\n", "ab".repeat(32))).unwrap();
    let with_own_key = arbiter.load_pair(Some(&key_file)).unwrap();
    assert_eq!((with_own_key.id, with_own_key.key), (created.id, [0xab; 32]));
    fs::write(&key_file, "garbage\n").unwrap();
    let error = arbiter.load_pair(Some(&key_file)).unwrap_err().to_string();
    assert!(error.contains("pair.key") && error.contains("not a"), "{error}");
}

fn racing_inits_create_one_pair(fixture: &Fixture) {
    let location = fixture.location("init-race");
    fixture.backend("init-race");
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (location, barrier) = (location.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let arbiter = location.parse::<ArbiterLocation>().unwrap().open();
                barrier.wait();
                arbiter.init_pair().map(|identity| identity.id)
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
    let created: Vec<&String> =
        outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(matches!(error, PairError::Exists { .. }), "{error}");
        }
    }
    let loaded = fixture.backend("init-race").load_pair(None).unwrap();
    assert_eq!(&loaded.id, created[0]);
}

// ---- Each property on each backend ----------------------------------------------------------

#[test]
fn dir_two_sides_racing_have_exactly_one_winner() {
    race(&Fixture::dir(), 2, 300);
}

#[test]
fn etcd_two_sides_racing_have_exactly_one_winner() {
    race(&Fixture::etcd(), 2, 100);
}

#[test]
fn dir_many_sides_racing_have_exactly_one_winner() {
    let fixture = Fixture::dir();
    race(&fixture, 8, 60);
    race_between_hosts(&fixture);
}

#[test]
fn etcd_many_sides_racing_have_exactly_one_winner() {
    let fixture = Fixture::etcd();
    race(&fixture, 8, 30);
    race_between_hosts(&fixture);
}

#[test]
fn dir_generations_are_independent_and_lost_replies_are_wins() {
    let fixture = Fixture::dir();
    generations_are_independent(&fixture);
    a_win_hidden_by_a_lost_reply_is_a_win(&fixture);
}

#[test]
fn etcd_generations_are_independent_and_lost_replies_are_wins() {
    let fixture = Fixture::etcd();
    generations_are_independent(&fixture);
    a_win_hidden_by_a_lost_reply_is_a_win(&fixture);
}

#[test]
fn dir_unreachable_storage_is_retried_until_it_answers() {
    unreachable_storage_is_retried_until_it_answers(Fixture::dir());
}

#[test]
fn etcd_unreachable_storage_is_retried_until_it_answers() {
    unreachable_storage_is_retried_until_it_answers(Fixture::etcd());
}

#[test]
fn dir_giving_up_names_the_arbiter_and_never_wins() {
    giving_up_names_the_arbiter_and_never_wins(Fixture::dir());
}

#[test]
fn etcd_giving_up_names_the_arbiter_and_never_wins() {
    giving_up_names_the_arbiter_and_never_wins(Fixture::etcd());
}

#[test]
fn dir_foreign_record_is_an_error_not_a_win() {
    a_foreign_record_is_an_error_not_a_win(&Fixture::dir());
}

#[test]
fn etcd_foreign_record_is_an_error_not_a_win() {
    a_foreign_record_is_an_error_not_a_win(&Fixture::etcd());
}

#[test]
fn dir_pair_identity_init_load_next() {
    let fixture = Fixture::dir();
    the_pair_identity_is_created_once_and_advanced_only_when_decided(&fixture);
    racing_inits_create_one_pair(&fixture);
}

#[test]
fn etcd_pair_identity_init_load_next() {
    let fixture = Fixture::etcd();
    the_pair_identity_is_created_once_and_advanced_only_when_decided(&fixture);
    racing_inits_create_one_pair(&fixture);
}

// ---- One backend only -----------------------------------------------------------------------

#[test]
fn dir_temporary_files_are_cleaned_and_a_half_written_one_never_counts() {
    let fixture = Fixture::dir();
    race(&fixture, 4, 20);
    let Fixture::Dir(dir) = &fixture else { unreachable!() };
    let race_dir = dir.path().join("race");
    let leftovers: Vec<_> = fs::read_dir(&race_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with("generation-") && !name.starts_with("pair"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // What a side that crashed before link(2) leaves behind: a temporary file, cut short.
    fs::write(race_dir.join(".generation-99.deadbeef-0-0-0.tmp"), "ftvm-arbiter 1\ngenera")
        .unwrap();
    let arbiter = Arbiter::new(&race_dir);
    assert_eq!(ArbiterBackend::holder(&arbiter, 99).unwrap(), None);
    assert_eq!(arbiter.try_set(99, "backup").unwrap(), Verdict::Won);
}

#[test]
fn dir_unusable_directory_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    for (location, fix) in [(dir.path().join("missing"), "mkdir"), (file, "name a directory")] {
        let error = Arbiter::new(&location).probe().unwrap_err();
        assert!(error.fix().is_some_and(|text| text.contains(fix)), "{error}: {:?}", error.fix());
    }
}

/// A web server that is not etcd on a free loopback port: each of `requests` connections gets
/// a 404 page. Returns the port and the thread, which ends after the last one.
fn not_etcd(requests: usize) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let web = thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let page = "<html>not here</html>";
            let reply = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (port, web)
}

#[test]
fn etcd_urls_that_are_not_etcd_or_name_no_pair_say_what_to_fix() {
    // A web server that is not etcd, alone in the URL: the fix names etcd's port.
    let (port, web) = not_etcd(1);
    let url = format!("etcd://127.0.0.1:{port}/ftvm").parse().unwrap();
    let error = EtcdArbiter::new(url).probe().unwrap_err();
    web.join().unwrap();
    assert!(matches!(error, ArbiterError::Etcd(EtcdError::NotEtcd { .. })), "{error}");
    assert!(error.fix().is_some_and(|fix| fix.contains("2379")), "{error}");
    // A real etcd, but a prefix with no pair: loading says so and how to create one.
    let fixture = Fixture::etcd();
    let arbiter = fixture.backend("nothing-here");
    assert!(arbiter.probe().is_ok());
    let error = arbiter.load_pair(None).unwrap_err().to_string();
    assert!(
        error.contains("holds no FT pair") && error.contains("ftvm pair init etcd://"),
        "{error}"
    );
    let error = arbiter.try_set(1, "backup").unwrap_err();
    assert!(matches!(error, ArbiterError::Etcd(EtcdError::NoPair { .. })), "{error}");
    assert!(error.fix().is_some(), "{error}");
    // Nothing listening at all: unreachable, retried, no fix; every endpoint is named.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let both = format!("etcd://127.0.0.1:{closed},localhost:{closed}/ftvm");
    let error = both.parse::<ArbiterLocation>().unwrap().open().probe().unwrap_err();
    assert!(error.is_transient() && error.fix().is_none(), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{closed}")), "{message}");
    assert!(message.contains(&format!("localhost:{closed}")), "{message}");
}

#[test]
fn etcd_a_cluster_that_refuses_this_client_says_what_to_fix() {
    let fixture = Fixture::etcd();
    let arbiter = with_pair(&fixture, "auth");
    let Fixture::Etcd(server) = &fixture else { unreachable!() };
    server.enable_auth();
    let error = arbiter.probe().unwrap_err();
    assert!(matches!(error, ArbiterError::Etcd(EtcdError::Refused { .. })), "{error}");
    assert!(error.to_string().contains("user name is empty"), "{error}");
    assert!(error.fix().is_some_and(|fix| fix.contains("authentication")), "{error}");
    // Refused is still retried once a side runs (an operator may fix the cluster), and never
    // a win.
    assert!(error.is_transient());
    let error = arbiter.try_set(1, "backup").unwrap_err();
    assert!(matches!(error, ArbiterError::Etcd(EtcdError::Refused { .. })), "{error}");
}

#[test]
fn etcd_a_second_endpoint_answers_when_the_first_is_down() {
    let fixture = Fixture::etcd();
    let Fixture::Etcd(server) = &fixture else { unreachable!() };
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The first endpoint refuses connections, the second is not etcd (a wrong port in the
    // list): both are passed over for the real member.
    let (web_port, web) = not_etcd(1);
    let url = format!(
        "etcd://127.0.0.1:{closed},127.0.0.1:{web_port},{}/ftvm-test/failover",
        server.endpoint()
    );
    let arbiter = url.parse::<ArbiterLocation>().unwrap().open();
    arbiter.init_pair().unwrap();
    // The member that answered is asked first from then on: the web server, which answers
    // one request only, is not asked again.
    assert_eq!(arbiter.try_set(1, "backup").unwrap(), Verdict::Won);
    assert_eq!(arbiter.holder(1).unwrap().as_deref(), Some("backup"));
    web.join().unwrap();
}
