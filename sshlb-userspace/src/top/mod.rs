//! `sshlb-agent top`: a live terminal view of the running agent and its data plane, refreshed
//! every interval — per service and backend: health, state, weight, ring membership, live
//! sessions, flows, new flows/s, packets/s, bytes/s; packets/s by outcome and drops by reason.
//!
//! - [`model`]: two samples → the rows and their rates (sans-IO);
//! - [`screen`]: the rows drawn with ratatui (the terminal and `--once` share it);
//! - this module: the edges — sampling the control socket and the pinned counters, the
//!   terminal (raw mode and the alternate screen, restored on every way out: q, Esc, Ctrl-C,
//!   SIGTERM, SIGHUP, an error, a panic) and the keys.
//!
//! Sources: `status` from the control socket (the same numbers `status --json` prints) and the
//! pinned per-CPU `STATS` counters (what `stats IFACE` prints). The first sample must succeed
//! (else a one-line error before the terminal is touched); later, an agent that stops answering
//! is shown as such over its last answer while the pinned counters keep counting.

pub mod model;
pub mod screen;

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::control::{self, Request, Status};
pub use model::{Dashboard, Sample, Sort, ViewOptions};
pub use screen::Screen;

/// What `top` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// The agent's control socket.
    pub control: PathBuf,
    /// The pin root (`--pin-root`).
    pub pin_root: PathBuf,
    /// The data plane's interface (default: the agent's).
    pub iface: Option<String>,
    /// Time between samples.
    pub interval: Duration,
    /// Print one plain-text screen (rates over one interval) and exit.
    pub once: bool,
}

/// Why `top` could not run.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The agent could not be reached or did not answer.
    #[error(transparent)]
    Agent(#[from] control::ClientError),
    /// The agent answered without a status.
    #[error("the agent sent no status: {0}")]
    NoStatus(String),
    /// The interface asked for is not the agent's.
    #[error("the agent at {control} runs on {agent}, not {asked} (see --control)")]
    OtherInterface {
        /// The socket.
        control: String,
        /// The agent's interface.
        agent: String,
        /// The one asked for.
        asked: String,
    },
    /// The pinned counters could not be opened.
    #[error(transparent)]
    Pins(#[from] Box<crate::loader::LoaderError>),
    /// The pinned counters could not be read.
    #[error(transparent)]
    Stats(#[from] crate::stats::StatsError),
    /// A live view needs a terminal.
    #[error(
        "stdout is not a terminal: `top` draws a live screen; use --once for one plain-text screen"
    )]
    NotATerminal,
    /// An interval of zero.
    #[error("--interval must be more than 0")]
    ZeroInterval,
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
}

/// Width of the `--once` text when stdout is not a terminal.
const TEXT_WIDTH: u16 = 160;

/// Reads the agent and the counters, keeping the agent's last answer.
struct Sampler {
    control: PathBuf,
    stats: PerCpuArray<MapData, u64>,
    started: Instant,
    last: Status,
}

fn status(socket: &Path) -> Result<Status, TopError> {
    let reply = control::call(socket, &Request::Status)?;
    match (reply.ok, reply.status) {
        (true, Some(status)) => Ok(status),
        (_, _) => Err(TopError::NoStatus(reply.error.unwrap_or_else(|| "no reason given".into()))),
    }
}

impl Sampler {
    /// The first sample must come: the agent answers and its counters open.
    fn start(options: &Options) -> Result<(Self, Sample), TopError> {
        let first = status(&options.control)?;
        if let Some(asked) = options.iface.as_ref().filter(|i| **i != first.interface) {
            return Err(TopError::OtherInterface {
                control: options.control.display().to_string(),
                agent: first.interface,
                asked: asked.clone(),
            });
        }
        let stats =
            crate::loader::pinned_stats(&options.pin_root, &first.interface).map_err(Box::new)?;
        let started = Instant::now();
        let counters = crate::stats::read(&stats)?;
        let sample = Sample {
            taken: started.elapsed(),
            status: first.clone(),
            fresh: true,
            counters,
            ..Sample::default()
        };
        Ok((Self { control: options.control.clone(), stats, started, last: first }, sample))
    }

    fn sample(&mut self) -> Sample {
        let (fresh, agent_error) = match status(&self.control) {
            Ok(s) => {
                self.last = s;
                (true, None)
            }
            Err(e) => (false, Some(e.to_string())),
        };
        let (counters, counters_error) = match crate::stats::read(&self.stats) {
            Ok(c) => (c, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Sample {
            taken: self.started.elapsed(),
            status: self.last.clone(),
            fresh,
            agent_error,
            counters,
            counters_error,
        }
    }
}

/// Runs `top`: the live view until `q`, Esc, Ctrl-C or a SIGTERM/SIGHUP/SIGINT, or with `once`
/// one plain-text screen.
pub fn run(options: &Options) -> Result<(), TopError> {
    if options.interval.is_zero() {
        return Err(TopError::ZeroInterval);
    }
    let tty = std::io::stdout().is_terminal();
    if !options.once && !tty {
        return Err(TopError::NotATerminal);
    }
    let (mut sampler, first) = Sampler::start(options)?;
    if options.once {
        std::thread::sleep(options.interval);
        let now = sampler.sample();
        let view = ViewOptions::default();
        let dashboard = Dashboard::build(Some(&first), &now, view);
        let width = if tty {
            crossterm::terminal::size().map_or(TEXT_WIDTH, |(w, _)| w)
        } else {
            TEXT_WIDTH
        };
        let screen = Screen { dashboard: &dashboard, options: view, interval: options.interval };
        print!("{}", screen.text(width));
        return Ok(());
    }
    // Samples come from a thread of their own: a slow or hung agent (a status walks the whole
    // connection table) never keeps the keys from answering.
    let (tx, samples) = std::sync::mpsc::channel();
    let interval = options.interval;
    std::thread::spawn(move || {
        let mut next = Instant::now() + interval;
        loop {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            // Fell behind (a slow agent): start the beat again rather than catch up.
            next = (next + interval).max(Instant::now());
            if tx.send(sampler.sample()).is_err() {
                return;
            }
        }
    });
    // SIGTERM, SIGHUP or SIGINT (raw mode turns Ctrl-C into a key, but `kill -INT` still
    // comes) end the loop like `q`, so the terminal is given back.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in
        [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP, signal_hook::consts::SIGINT]
    {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(TopError::Terminal)?;
    }
    let mut terminal = Terminal::enter()?;
    live(&mut terminal.0, &samples, first, interval, &stop)
}

/// Raw mode and the alternate screen for as long as it lives; restored when dropped (a
/// returned error included) and by ratatui's panic hook.
struct Terminal(ratatui::DefaultTerminal);

impl Terminal {
    fn enter() -> Result<Self, TopError> {
        match ratatui::try_init() {
            Ok(t) => Ok(Self(t)),
            Err(e) => {
                // Raw mode may be on although the alternate screen failed.
                ratatui::restore();
                Err(TopError::Terminal(e))
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Quit,
    Sort,
    Drops,
    Other,
}

fn key(code: KeyCode, modifiers: KeyModifiers) -> Key {
    match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Key::Quit,
        KeyCode::Char('s') => Key::Sort,
        KeyCode::Char('z') => Key::Drops,
        _ => Key::Other,
    }
}

/// How often keys are looked at while waiting for the next sample.
const KEY_POLL: Duration = Duration::from_millis(50);

fn live(
    terminal: &mut ratatui::DefaultTerminal,
    samples: &std::sync::mpsc::Receiver<Sample>,
    first: Sample,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<(), TopError> {
    let mut view = ViewOptions::default();
    let (mut before, mut now) = (None::<Sample>, first);
    loop {
        let dashboard = Dashboard::build(before.as_ref(), &now, view);
        let screen = Screen { dashboard: &dashboard, options: view, interval };
        terminal.draw(|f| f.render_widget(&screen, f.area())).map_err(TopError::Terminal)?;
        // Keys until the next sample arrives; a key that changes the view redraws at once.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Ok(sample) = samples.try_recv() {
                before = Some(std::mem::replace(&mut now, sample));
                break;
            }
            if !event::poll(KEY_POLL).map_err(TopError::Terminal)? {
                continue;
            }
            match event::read().map_err(TopError::Terminal)? {
                Event::Key(k) if k.kind == KeyEventKind::Press => match key(k.code, k.modifiers) {
                    Key::Quit => return Ok(()),
                    Key::Sort => {
                        view.sort = view.sort.next();
                        break;
                    }
                    Key::Drops => {
                        view.all_drops = !view.all_drops;
                        break;
                    }
                    Key::Other => {}
                },
                Event::Resize(..) => break,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        assert_eq!(key(KeyCode::Char('q'), KeyModifiers::NONE), Key::Quit);
        assert_eq!(key(KeyCode::Esc, KeyModifiers::NONE), Key::Quit);
        assert_eq!(key(KeyCode::Char('c'), KeyModifiers::CONTROL), Key::Quit);
        assert_eq!(key(KeyCode::Char('c'), KeyModifiers::NONE), Key::Other);
        assert_eq!(key(KeyCode::Char('s'), KeyModifiers::NONE), Key::Sort);
        assert_eq!(key(KeyCode::Char('z'), KeyModifiers::NONE), Key::Drops);
    }

    #[test]
    fn no_agent_is_one_clear_error_before_any_terminal_work() {
        let options = Options {
            control: std::env::temp_dir()
                .join(format!("sshlb-top-none-{}.sock", std::process::id())),
            pin_root: std::env::temp_dir(),
            iface: None,
            interval: Duration::from_secs(1),
            once: true,
        };
        let err = run(&options).expect_err("no agent");
        let text = err.to_string();
        assert!(text.contains("cannot reach the agent at") && !text.contains('\n'), "{text}");
        let zero = Options { interval: Duration::ZERO, ..options };
        assert!(matches!(run(&zero), Err(TopError::ZeroInterval)));
    }
}
