//! Helpers for the benchmarks (cargo bench targets of this crate): a table
//! of medians, the Python echo client's measurements, and process CPU time.
use crate::netns::Lab;

/// The test client (a Python program, not ftvm code).
pub const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/echo_client.py");

/// Rows of samples, printed as a markdown table of medians.
#[derive(Default)]
pub struct Table {
    rows: Vec<(String, &'static str, Vec<f64>)>,
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

impl Table {
    /// Adds a sample to the row `name` (created on first use).
    pub fn add(&mut self, name: &str, unit: &'static str, sample: f64) {
        match self.rows.iter_mut().find(|row| row.0 == name) {
            Some(row) => row.2.push(sample),
            None => self.rows.push((name.to_string(), unit, vec![sample])),
        }
    }

    /// The median of row `name`.
    pub fn median(&self, name: &str) -> Option<f64> {
        self.rows.iter().find(|row| row.0 == name).map(|row| median(&row.2))
    }

    /// Prints the table.
    pub fn print(&self, runs: usize) {
        println!("| measurement ({runs} runs) | median | unit | min | max |");
        println!("|---|---:|---|---:|---:|");
        for (name, unit, samples) in &self.rows {
            let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!("| {name} | {:.2} | {unit} | {min:.2} | {max:.2} |", median(samples));
        }
    }
}

/// `--runs N` from the bench's arguments, or `default`.
pub fn runs_arg(default: usize) -> usize {
    std::env::args()
        .skip_while(|arg| arg != "--runs")
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Runs `program args...` in the lab's client namespace and returns its
/// output; panics with that output, and `needs` (what to install), on failure.
fn in_client(lab: &Lab, program: &str, args: &[&str], needs: &str) -> String {
    let output = lab
        .client_command(program, args)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error} ({needs})"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?}: {stdout}{} ({needs})",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs the Python test client in the lab's client namespace.
pub fn client(lab: &Lab, args: &[&str]) -> String {
    let needs = "the test client needs python3: apt-get install python3";
    in_client(lab, "python3", &[&[CLIENT][..], args].concat(), needs)
}

/// Runs the compiled helper at `netclient` (`CARGO_BIN_EXE_ftvm-netclient`)
/// in the lab's client namespace.
pub fn netclient(lab: &Lab, netclient: &str, args: &[&str]) -> String {
    in_client(lab, netclient, args, "built with the tests; raw ICMP needs root")
}

/// Echo throughput (MB/s over `connections` streams of `bytes_each`) and
/// the 1-byte round trip (median, p99 in us) against `ip:7`, measured by the
/// compiled client at `netclient_exe`.
pub fn measure_echo(
    lab: &Lab,
    netclient_exe: &str,
    ip: &str,
    connections: usize,
    bytes_each: usize,
) -> (f64, f64, f64) {
    client(lab, &["wait", ip, "7", "20"]);
    let stream = netclient(
        lab,
        netclient_exe,
        &["stream", ip, "7", &connections.to_string(), &bytes_each.to_string()],
    );
    let mb_per_s: f64 = stream
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("ok BYTES SECONDS MB/s");
    let rtt = netclient(lab, netclient_exe, &["rtt", ip, "7", "500"]);
    let mut fields =
        rtt.split_whitespace().skip(1).map(|v| v.parse::<f64>().expect("rtt MEDIAN P99"));
    (mb_per_s, fields.next().expect("median"), fields.next().expect("p99"))
}

fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).expect("the process is alive");
    // Fields after the command name (which may contain spaces) start after ')'.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / ticks_per_second
}

/// User plus system CPU seconds of a process's main thread (the VMM's vCPU
/// thread) so far.
pub fn thread_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/task/{pid}/stat"))
}

/// CPU time of the children this process waits for from now on (a client
/// run with `output()`), from getrusage(RUSAGE_CHILDREN).
pub struct ChildrenCpu(f64);

fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

impl ChildrenCpu {
    /// Starts counting.
    pub fn start() -> Self {
        ChildrenCpu(children_cpu_seconds())
    }

    /// CPU seconds of the children reaped since `start`.
    pub fn seconds(&self) -> f64 {
        children_cpu_seconds() - self.0
    }
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// ICMP echo from the client namespace to `ip` through the compiled helper
/// at `netclient` (`CARGO_BIN_EXE_ftvm-netclient`): `count` requests
/// `interval_ms` apart. Returns the replies received and their median round
/// trip in us.
pub fn ping(lab: &Lab, netclient: &str, ip: &str, count: u16, interval_ms: u64) -> (u16, f64) {
    let output = lab
        .client_command(netclient, &["ping", ip, &count.to_string(), &interval_ms.to_string()])
        .output()
        .unwrap_or_else(|error| panic!("{netclient}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "ping RECEIVED COUNT MEDIAN_US"
    let fields: Vec<f64> =
        stdout.split_whitespace().skip(1).filter_map(|value| value.parse().ok()).collect();
    assert_eq!(
        fields.len(),
        3,
        "ftvm-netclient ping: `{stdout}` {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (fields[0] as u16, fields[2])
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// How busy the whole machine was over an interval: every process, the host
/// network stack's softirqs, and whatever else shares the machine.
pub struct MachineCpu((f64, f64));

impl MachineCpu {
    /// Starts counting.
    pub fn start() -> Self {
        MachineCpu(machine_jiffies())
    }

    /// CPU seconds all cores spent busy since `start`, and the busy fraction
    /// of all cores.
    pub fn busy(&self) -> (f64, f64) {
        let (busy, total) = machine_jiffies();
        let (busy, total) = (busy - self.0 .0, total - self.0 .1);
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (busy / ticks_per_second, if total > 0.0 { busy / total } else { 0.0 })
    }
}

/// Runs `spawn` with the calling thread allowed only on `cores`, so the processes it starts
/// (which inherit the mask) stay there; the thread gets its own mask back afterwards. The
/// benchmarks use it to give the backup a core of its own, as a host of its own would.
pub fn on_cores<T>(cores: &[usize], spawn: impl FnOnce() -> T) -> T {
    // SAFETY: an all-zero cpu_set_t is the empty set, filled by sched_getaffinity below.
    let mut own: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes one cpu_set_t of the size given, for this thread (0).
    let result = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&own), &mut own) };
    assert_eq!(result, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    let mut set: libc::cpu_set_t = own;
    // SAFETY: CPU_ZERO clears the set we own.
    unsafe { libc::CPU_ZERO(&mut set) };
    for core in cores {
        // SAFETY: CPU_SET writes one bit of the set we own; core is below the machine's count.
        unsafe { libc::CPU_SET(*core, &mut set) };
    }
    set_thread_cores(&set);
    let spawned = spawn();
    set_thread_cores(&own);
    spawned
}

/// The cores this machine has.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

fn set_thread_cores(set: &libc::cpu_set_t) {
    // SAFETY: sched_setaffinity reads a cpu_set_t of the size given, for this thread (0).
    let result = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) };
    assert_eq!(result, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
}
