//! A lab (`ftvm lab up`) for one test, in a state directory of its own (so
//! its namespaces have names of their own), taken down on drop even when
//! the test fails; and helpers that run `ftvm lab|gfs|mr` against it.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Finished, Reaped};

static LABS: AtomicU32 = AtomicU32::new(0);

/// Plain master and coordinator on h1; a chunkserver and a worker on each of h2-h4.
pub const SPREAD_LAB: &str = r#"
[[host]]
name = "h1"
[[host]]
name = "h2"
[[host]]
name = "h3"
[[host]]
name = "h4"

[[vm]]
name = "master"
role = "gfs-master"
host = "h1"
[[vm]]
name = "coordinator"
role = "mr-coordinator"
host = "h1"
[[vm]]
name = "cs-a"
role = "gfs-chunkserver"
host = "h2"
[[vm]]
name = "cs-b"
role = "gfs-chunkserver"
host = "h3"
[[vm]]
name = "cs-c"
role = "gfs-chunkserver"
host = "h4"
[[vm]]
name = "worker-a"
role = "mr-worker"
host = "h2"
[[vm]]
name = "worker-b"
role = "mr-worker"
host = "h3"
[[vm]]
name = "worker-c"
role = "mr-worker"
host = "h4"
"#;

/// A running lab and a scratch directory for local files.
pub struct TestLab {
    exe: String,
    /// The lab's state directory (`--state`).
    pub state: PathBuf,
    /// Local files of the test.
    pub scratch: PathBuf,
}

impl TestLab {
    /// Brings up the lab of `lab_file` (TOML text; the built-in lab without).
    pub fn up(exe: &str, lab_file: Option<&str>) -> TestLab {
        crate::require_kvm();
        let id = format!("{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::SeqCst));
        let scratch = std::env::temp_dir().join(format!("ftvm-lab-test-{id}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let lab = TestLab { exe: exe.to_string(), state: scratch.join("state"), scratch };
        // From here on, Drop takes down whatever came up.
        let mut args = vec!["lab".to_string(), "up".to_string()];
        if let Some(text) = lab_file {
            let path = lab.scratch.join("lab.toml");
            std::fs::write(&path, text).unwrap();
            args.push(path.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.ok(&args);
        lab
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command.args(args).env("FTVM_LAB_STATE", &self.state);
        command
    }

    /// Runs `ftvm ARGS` against the lab.
    pub fn ftvm(&self, args: &[&str]) -> Finished {
        Reaped::spawn(self.command(args)).finish()
    }

    /// Runs `ftvm ARGS`, asserts it exits 0, returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let finished = self.ftvm(args);
        assert_eq!(
            finished.status,
            Some(0),
            "ftvm {} failed:\n{}{}\n{}",
            args.join(" "),
            finished.stdout,
            finished.stderr,
            self.logs()
        );
        finished.stdout
    }

    /// Starts `ftvm ARGS` against the lab (killed on drop).
    pub fn spawn(&self, args: &[&str]) -> Reaped {
        Reaped::spawn(self.command(args))
    }

    /// The console of `vm`'s `side` (plain, primary, backup) so far.
    pub fn console(&self, vm: &str, side: &str) -> String {
        std::fs::read_to_string(self.state.join("logs").join(format!("{vm}.{side}.console")))
            .unwrap_or_default()
    }

    /// A local file of the test.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// The ends of every VM's logs, for failure messages.
    pub fn logs(&self) -> String {
        let Ok(entries) = std::fs::read_dir(self.state.join("logs")) else {
            return String::new();
        };
        let mut paths: Vec<PathBuf> =
            entries.filter_map(|entry| Some(entry.ok()?.path())).collect();
        paths.sort();
        paths.iter().map(|path| format!("--- {}\n{}\n", path.display(), tail(path, 15))).collect()
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.command(&["lab", "down"]).output();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `count` bytes of lines of words drawn from `seed` (a small vocabulary).
pub fn text(seed: u64, count: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "whale", "sea", "ship", "ahab", "ishmael", "white", "harpoon", "deck", "mast", "sail",
        "storm", "call",
    ];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut data = Vec::with_capacity(count + 64);
    while data.len() < count {
        for index in 0..3 + next() % 8 {
            if index > 0 {
                data.push(b' ');
            }
            data.extend_from_slice(WORDS[next() % WORDS.len()].as_bytes());
            // Some numbered words, so there are more than a dozen keys.
            if next() % 4 == 0 {
                data.extend_from_slice(["a", "b", "c", "d", "e", "f"][next() % 6].as_bytes());
            }
        }
        data.push(b'\n');
    }
    data
}

/// Word counts of `text` (words: runs of ASCII letters, as the MapReduce app splits them).
pub fn word_count(text: &[u8]) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for word in text.split(|byte| !byte.is_ascii_alphabetic()).filter(|word| !word.is_empty()) {
        *counts.entry(String::from_utf8_lossy(word).into_owned()).or_insert(0) += 1;
    }
    counts
}

/// The `word count` lines of every file in `dir`, as counts.
pub fn counts_in(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let (word, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("line `{line}`"));
            let previous = counts.insert(word.to_string(), count.parse().unwrap());
            assert!(previous.is_none(), "`{word}` counted in two output files");
        }
    }
    counts
}
