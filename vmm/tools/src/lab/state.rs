//! The lab's state directory: what `lab up` made (namespaces, VMM
//! processes, disk images, logs, arbiter directories), written after every
//! step so `lab down` can remove everything even after `lab up` or the
//! machine's ftvm processes died half-way, and so the host clients find the
//! lab. Layout: `lab.json`, `logs/VM.SIDE.{console,vmm}`, `disks/`,
//! `arbiter/VM/`.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::netns::Names;
use super::spec::Plan;

/// Where labs keep their state unless `--state` or `FTVM_LAB_STATE` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/ftvm-lab";
const STATE_FILE: &str = "lab.json";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no lab is running (nothing at {0}): start one with `ftvm lab up`")]
    NoLab(PathBuf),
    #[error("a lab is already running at {0}: use it, or remove it with `ftvm lab down`")]
    Exists(PathBuf),
    #[error("the lab state {path} is unreadable ({message}): remove the lab with `ftvm lab down`")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write the lab state in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Which half of a VM a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A VM without FT.
    Plain,
    Primary,
    Backup,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Plain => "plain",
            Side::Primary => "primary",
            Side::Backup => "backup",
        }
    }
}

/// One VMM process of the lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proc {
    pub vm: String,
    pub side: Side,
    pub host: String,
    pub pid: u32,
    /// The guest console (stdout).
    pub console: PathBuf,
    /// The VMM's own messages (stderr): role changes, summaries, errors.
    pub log: PathBuf,
}

/// Everything a lab is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub names: Names,
    pub plan: Plan,
    pub procs: Vec<Proc>,
    /// Hosts crashed with `lab kill`.
    pub dead_hosts: Vec<String>,
    /// Processes killed with `lab kill` (by pid).
    pub killed: Vec<u32>,
    /// What happened to the lab (up, crashes), oldest first, for the live view.
    #[serde(default)]
    pub events: Vec<LabEvent>,
}

/// One entry of the lab's timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabEvent {
    /// Wall-clock milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub text: String,
}

impl LabState {
    /// Appends `text` to the timeline, stamped now.
    pub fn record(&mut self, text: String) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.events.push(LabEvent { unix_ms, text });
    }
}

/// A lab's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    /// `dir`, or the default.
    pub fn new(dir: Option<PathBuf>) -> StateDir {
        StateDir { dir: dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)) }
    }

    /// The namespace names of the lab kept here: a prefix drawn from the
    /// directory, so labs in different directories never collide.
    pub fn names(&self) -> Names {
        let absolute = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let hash = xxhash_rust::xxh3::xxh3_64(absolute.as_os_str().as_encoded_bytes());
        Names { prefix: format!("ftvm{:06x}", hash & 0xff_ffff) }
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn disks(&self) -> PathBuf {
        self.dir.join("disks")
    }

    /// The arbiter directory of the pair of VM `vm` (on storage every host shares).
    pub fn arbiter(&self, vm: &str) -> PathBuf {
        self.dir.join("arbiter").join(vm)
    }

    fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io { path: self.dir.clone(), source }
    }

    /// True if a lab's state is here.
    pub fn exists(&self) -> bool {
        self.file().exists()
    }

    /// Makes the directory for a new lab.
    pub fn create(&self) -> Result<(), StateError> {
        if self.exists() {
            return Err(StateError::Exists(self.dir.clone()));
        }
        for dir in [self.logs(), self.disks(), self.dir.join("arbiter")] {
            std::fs::create_dir_all(&dir).map_err(|error| self.io(error))?;
        }
        Ok(())
    }

    /// Reads the lab's state.
    pub fn load(&self) -> Result<LabState, StateError> {
        let path = self.file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NoLab(self.dir.clone()))
            }
            Err(error) => return Err(self.io(error)),
        };
        serde_json::from_str(&text)
            .map_err(|error| StateError::Corrupt { path, message: error.to_string() })
    }

    /// Writes the lab's state (atomically: a crash leaves the old or the new one).
    pub fn save(&self, state: &LabState) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(state).expect("the state always serializes");
        let temporary = self.dir.join(format!("{STATE_FILE}.new"));
        std::fs::write(&temporary, text).map_err(|error| self.io(error))?;
        std::fs::rename(&temporary, self.file()).map_err(|error| self.io(error))
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(self.io(error)),
            _ => Ok(()),
        }
    }
}

/// True while process `pid` exists and is an ftvm VMM of ours (not a
/// recycled pid).
pub fn alive(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie (state Z) has exited.
    let state = status.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    if state == Some(Some('Z')) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.windows(4).any(|window| window == b"ftvm"))
}

/// The last `lines` lines of the file at `path` (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
