//! `ftvm lab status --watch`: the live view (ratatui). Hosts, VMs with
//! their roles, which side of a pair runs the guest and under which
//! generation, and for each running primary its backup lag and log
//! bandwidth, plus a timeline of crashes, failovers and role changes.
//!
//! The pair figures come from the primaries' own statistics line: each
//! refresh sends every running primary SIGUSR1, and the next reads the
//! `ftvm: pair: ...` line it printed to its log (so they are one refresh
//! old). Role changes are seen by comparing refreshes; crashes come from the
//! lab's own timeline (`lab kill` records them).
use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Row, Table};
use ratatui::Frame;

use super::state::{LabState, Proc, Side, StateDir, StateError};
use super::status::{status, Status};
use super::LabError;

/// Timeline entries kept on screen.
const TIMELINE_LINES: usize = 200;

/// What a primary last said about its pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PairFigures {
    pub sent_seq: u64,
    pub acked_seq: u64,
    pub log_bytes: u64,
    /// Median backup lag in bytes and in milliseconds.
    pub lag_bytes: u64,
    pub lag_ms: u64,
}

/// Parses the last `ftvm: pair: role ... sent seq N acked seq N log N bytes
/// lag entries a/b bytes c/d ms e/f` line of `log`.
pub fn pair_figures(log: &str) -> Option<PairFigures> {
    let line = log.lines().rev().find(|line| line.starts_with("ftvm: pair: role "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &[&str]| {
        let at = words.windows(key.len()).position(|window| window == key)? + key.len();
        words.get(at).copied()
    };
    let number = |key: &[&str]| after(key)?.parse::<u64>().ok();
    // `lag entries a/b bytes c/d ms e/f`: medians come first.
    let lag = words.iter().position(|word| *word == "entries")?;
    let median = |offset: usize| words.get(lag + offset)?.split('/').next()?.parse::<u64>().ok();
    Some(PairFigures {
        sent_seq: number(&["sent", "seq"])?,
        acked_seq: number(&["acked", "seq"])?,
        log_bytes: number(&["log"])?,
        lag_bytes: median(3)?,
        lag_ms: median(5)?,
    })
}

/// A primary's figures with its log bandwidth.
struct PairView {
    figures: PairFigures,
    log_bytes_per_s: f64,
}

/// Everything on screen, kept across refreshes.
#[derive(Default)]
struct View {
    status: Option<Status>,
    problem: Option<String>,
    pairs: BTreeMap<String, PairView>,
    /// (log bytes, when read) per primary pid, for bandwidth.
    samples: BTreeMap<u32, (u64, Instant)>,
    /// Each side's state at the last refresh, to see changes.
    sides: BTreeMap<(String, &'static str, String), String>,
    /// How many of the lab's own events were shown.
    events_seen: usize,
    timeline: VecDeque<String>,
}

fn clock(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:01}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        unix_ms % 1000 / 100
    )
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

impl View {
    fn note(&mut self, unix_ms: u64, text: String) {
        self.timeline.push_back(format!("{} {text}", clock(unix_ms)));
        while self.timeline.len() > TIMELINE_LINES {
            self.timeline.pop_front();
        }
    }

    fn refresh(&mut self, dir: &StateDir) {
        let state = match dir.load() {
            Ok(state) => state,
            Err(error @ StateError::NoLab(_)) => {
                self.status = None;
                self.problem = Some(error.to_string());
                return;
            }
            Err(error) => {
                self.problem = Some(error.to_string());
                return;
            }
        };
        self.problem = None;
        for event in state.events.iter().skip(self.events_seen) {
            let text = event.text.clone();
            self.note(event.unix_ms, text);
        }
        self.events_seen = state.events.len();
        let now = status(&state);
        for vm in &now.vms {
            for side in &vm.sides {
                let key = (vm.name.clone(), side.side.label(), side.host.clone());
                let previous = self.sides.insert(key, side.state.clone());
                if previous.as_ref().is_some_and(|before| *before != side.state) {
                    let before = previous.unwrap_or_default();
                    self.note(
                        now_unix_ms(),
                        format!(
                            "{} {}@{}: {before} -> {}",
                            vm.name,
                            side.side.label(),
                            side.host,
                            side.state
                        ),
                    );
                }
            }
        }
        self.read_pairs(&state);
        self.status = Some(now);
    }

    /// Reads what the primaries said since the last refresh and asks them again.
    fn read_pairs(&mut self, state: &LabState) {
        self.pairs.clear();
        let primaries: Vec<&Proc> = state
            .procs
            .iter()
            .filter(|proc| proc.side == Side::Primary && super::state::alive(proc.pid))
            .collect();
        for proc in primaries {
            let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
            if let Some(figures) = pair_figures(&log) {
                let now = Instant::now();
                let rate = match self.samples.insert(proc.pid, (figures.log_bytes, now)) {
                    Some((bytes, then)) if now > then => {
                        figures.log_bytes.saturating_sub(bytes) as f64 / (now - then).as_secs_f64()
                    }
                    _ => 0.0,
                };
                self.pairs.insert(proc.vm.clone(), PairView { figures, log_bytes_per_s: rate });
            }
            // SAFETY: kill(2) takes no pointers; the pid is a running VMM of
            // the lab (checked above), which prints its statistics on SIGUSR1.
            unsafe { libc::kill(proc.pid as i32, libc::SIGUSR1) };
        }
    }

    fn render(&self, frame: &mut Frame) {
        let [hosts_area, vms_area, timeline_area, help_area] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(6),
            Constraint::Length(12),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let Some(status) = &self.status else {
            let text = self.problem.clone().unwrap_or_else(|| "reading the lab...".into());
            frame.render_widget(Paragraph::new(text), vms_area);
            return;
        };
        let hosts: Vec<Span> = status
            .hosts
            .iter()
            .flat_map(|host| {
                let (word, color) = if host.dead {
                    ("dead", Color::Red)
                } else if host.spare {
                    ("spare", Color::DarkGray)
                } else {
                    ("up", Color::Green)
                };
                [
                    Span::styled(format!("{} {word}", host.name), Style::new().fg(color)),
                    Span::raw("   "),
                ]
            })
            .collect();
        frame.render_widget(
            Paragraph::new(Line::from(hosts)).block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(format!(" ftvm lab ({}) ", status.namespaces_prefix)),
            ),
            hosts_area,
        );
        let header =
            Row::new(["VM", "ROLE", "NODE", "ADDRESS", "LIVE ON", "SIDES", "LAG", "LOG RATE"])
                .style(Style::new().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = status
            .vms
            .iter()
            .map(|vm| {
                let sides: Vec<String> = vm
                    .sides
                    .iter()
                    .map(|side| {
                        let generation =
                            side.generation.map(|g| format!(" g{g}")).unwrap_or_default();
                        format!("{}@{} {}{generation}", side.side.label(), side.host, side.state)
                    })
                    .collect();
                let (lag, rate) = match self.pairs.get(&vm.name) {
                    Some(pair) => (
                        format!("{} B {} ms", pair.figures.lag_bytes, pair.figures.lag_ms),
                        format!("{:.1} KB/s", pair.log_bytes_per_s / 1e3),
                    ),
                    None => ("-".into(), "-".into()),
                };
                let live = vm.live_on.clone().unwrap_or_else(|| "DOWN".into());
                let style =
                    if vm.live_on.is_none() { Style::new().fg(Color::Red) } else { Style::new() };
                Row::new([
                    vm.name.clone(),
                    vm.role.guest_role().to_string(),
                    vm.node.to_string(),
                    vm.ip.clone(),
                    live,
                    sides.join("; "),
                    lag,
                    rate,
                ])
                .style(style)
            })
            .collect();
        let widths = [
            Constraint::Length(15),
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Min(30),
            Constraint::Length(14),
            Constraint::Length(11),
        ];
        frame.render_widget(
            Table::new(rows, widths)
                .header(header)
                .block(Block::new().borders(Borders::ALL).title(" VMs ")),
            vms_area,
        );
        let shown = timeline_area.height.saturating_sub(2) as usize;
        let items: Vec<ListItem> = self
            .timeline
            .iter()
            .skip(self.timeline.len().saturating_sub(shown))
            .map(|line| ListItem::new(line.as_str()))
            .collect();
        frame.render_widget(
            List::new(items).block(Block::new().borders(Borders::ALL).title(" timeline ")),
            timeline_area,
        );
        frame.render_widget(
            Paragraph::new(
                "q: quit   (lag and log rate: each primary's own statistics, one refresh old)",
            )
            .style(Style::new().fg(Color::DarkGray)),
            help_area,
        );
    }
}

/// Runs the live view until the user quits.
pub fn watch(dir: &StateDir, interval: Duration) -> Result<(), LabError> {
    if !std::io::stdout().is_terminal() {
        return Err(LabError::Usage(
            "--watch draws on a terminal; in scripts use `ftvm lab status --json`".into(),
        ));
    }
    let mut terminal = ratatui::init();
    let mut view = View::default();
    let result = (|| -> std::io::Result<()> {
        // SIGTERM (and SIGINT outside raw mode) only set the stop flag.
        while !crate::stop::stop_requested() {
            view.refresh(dir);
            terminal.draw(|frame| view.render(frame))?;
            let until = Instant::now() + interval;
            while let Some(wait) = until.checked_duration_since(Instant::now()) {
                if !event::poll(wait)? {
                    break;
                }
                if let Event::Key(key) = event::read()? {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result.map_err(|error| LabError::Usage(format!("the terminal failed: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::netns::Names;
    use crate::lab::spec::LabFile;
    use crate::lab::state::LabEvent;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn the_view_shows_hosts_vms_and_the_timeline() {
        let plan = LabFile::load(None).unwrap().plan().unwrap();
        let state = LabState {
            names: Names { prefix: "ftvmtest".into() },
            plan,
            procs: Vec::new(),
            dead_hosts: vec!["h2".into()],
            killed: Vec::new(),
            events: vec![LabEvent {
                unix_ms: 3_600_000,
                text: "killed host h2: worker1 (plain)".into(),
            }],
        };
        let mut view = View::default();
        for event in &state.events {
            view.note(event.unix_ms, event.text.clone());
        }
        view.status = Some(status(&state));
        let mut terminal = Terminal::new(TestBackend::new(150, 30)).unwrap();
        terminal.draw(|frame| view.render(frame)).unwrap();
        let screen: String =
            terminal.backend().buffer().content().iter().map(|cell| cell.symbol()).collect();
        for expected in
            ["h2 dead", "h5 spare", "mr-coordinator", "10.77.0.18", "01:00:00.0 killed host h2"]
        {
            assert!(screen.contains(expected), "`{expected}` not on screen:\n{screen}");
        }
    }

    #[test]
    fn a_primary_statistics_line_gives_its_figures() {
        let log = "ftvm: role: primary, generation 1\n\
            ftvm: pair: role primary generation 1 sent seq 120 acked seq 118 log 40960 bytes \
            lag entries 2/9 bytes 512/4096 ms 1/7 (median/p99)\n";
        let figures = pair_figures(log).unwrap();
        assert_eq!(
            figures,
            PairFigures {
                sent_seq: 120,
                acked_seq: 118,
                log_bytes: 40960,
                lag_bytes: 512,
                lag_ms: 1
            }
        );
    }
}
