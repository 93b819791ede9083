//! Pure push-to-talk logic, with time passed in: debouncing raw button edges
//! and turning stable button changes into Pressed/Released for the mode
//! (hold or toggle). Tested with scripted edges; no I/O here.

use std::time::{Duration, Instant};

use super::PttEvent;
use crate::config::PttMode;

/// Accepts a button level only once it has been stable for the window, so
/// bounces and glitches shorter than the window never become events.
#[derive(Debug, Clone)]
pub struct Debouncer {
    window: Duration,
    stable: bool,
    /// The latest raw level and when it began, if it differs from `stable`.
    candidate: Option<(bool, Instant)>,
}

impl Debouncer {
    /// `pressed`: the button's state at start.
    pub fn new(window: Duration, pressed: bool) -> Self {
        Debouncer {
            window,
            stable: pressed,
            candidate: None,
        }
    }

    pub fn is_pressed(&self) -> bool {
        self.stable
    }

    /// A raw edge: the button now reads `pressed`. Returns the deadline at
    /// which [`Debouncer::poll`] should be called to confirm it.
    pub fn edge(&mut self, pressed: bool, at: Instant) -> Option<Instant> {
        if pressed == self.stable {
            // Back to the stable level before the window ended: a glitch.
            self.candidate = None;
            return None;
        }
        match self.candidate {
            Some((level, _)) if level == pressed => {}
            _ => self.candidate = Some((pressed, at)),
        }
        self.candidate.map(|(_, since)| since + self.window)
    }

    /// Confirms a candidate level that has lasted the whole window; returns
    /// the new stable state when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<bool> {
        match self.candidate {
            Some((level, since)) if now >= since + self.window => {
                self.candidate = None;
                self.stable = level;
                Some(level)
            }
            _ => None,
        }
    }

    /// When `poll` should next be called.
    pub fn deadline(&self) -> Option<Instant> {
        self.candidate.map(|(_, since)| since + self.window)
    }
}

/// Turns stable button changes into events for the configured mode.
#[derive(Debug, Clone)]
pub struct ModeLogic {
    mode: PttMode,
    talking: bool,
}

impl ModeLogic {
    pub fn new(mode: PttMode) -> Self {
        ModeLogic {
            mode,
            talking: false,
        }
    }

    /// The button went down (`true`) or up (`false`).
    pub fn button(&mut self, down: bool) -> Option<PttEvent> {
        match (self.mode, down) {
            (PttMode::Hold, true) => Some(PttEvent::Pressed),
            (PttMode::Hold, false) => Some(PttEvent::Released),
            (PttMode::Toggle, true) => {
                self.talking = !self.talking;
                Some(if self.talking {
                    PttEvent::Pressed
                } else {
                    PttEvent::Released
                })
            }
            (PttMode::Toggle, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a script of (ms, level) raw edges through debouncer + mode logic,
    /// polling at every deadline, and returns (ms, event) pairs.
    fn run(
        window_ms: u64,
        mode: PttMode,
        edges: &[(u64, bool)],
        until_ms: u64,
    ) -> Vec<(u64, PttEvent)> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Debouncer::new(Duration::from_millis(window_ms), false);
        let mut m = ModeLogic::new(mode);
        let mut out = Vec::new();
        let mut i = 0;
        let mut now = 0;
        while now <= until_ms {
            while i < edges.len() && edges[i].0 == now {
                d.edge(edges[i].1, at(now));
                i += 1;
            }
            if let Some(level) = d.poll(at(now))
                && let Some(e) = m.button(level)
            {
                out.push((now, e));
            }
            now += 1;
        }
        out
    }

    #[test]
    fn clean_press_and_release() {
        let ev = run(20, PttMode::Hold, &[(100, true), (600, false)], 1000);
        assert_eq!(
            ev,
            vec![(120, PttEvent::Pressed), (620, PttEvent::Released)]
        );
    }

    #[test]
    fn bounces_collapse_into_one_event() {
        // Contact bounce on press and on release.
        let edges = [
            (100, true),
            (102, false),
            (103, true),
            (105, false),
            (106, true),
            (500, false),
            (501, true),
            (503, false),
        ];
        let ev = run(20, PttMode::Hold, &edges, 1000);
        assert_eq!(
            ev,
            vec![(126, PttEvent::Pressed), (523, PttEvent::Released)]
        );
    }

    #[test]
    fn glitches_shorter_than_the_window_are_ignored() {
        let ev = run(
            20,
            PttMode::Hold,
            &[(100, true), (110, false), (300, true), (319, false)],
            1000,
        );
        assert!(ev.is_empty(), "{ev:?}");
        // While held, a short dropout does not release.
        let ev = run(
            20,
            PttMode::Hold,
            &[(100, true), (400, false), (405, true), (900, false)],
            1000,
        );
        assert_eq!(
            ev,
            vec![(120, PttEvent::Pressed), (920, PttEvent::Released)]
        );
    }

    #[test]
    fn long_hold_stays_pressed() {
        let ev = run(20, PttMode::Hold, &[(10, true)], 60_000);
        assert_eq!(ev, vec![(30, PttEvent::Pressed)]);
    }

    #[test]
    fn toggle_mode() {
        let edges = [
            (100, true),
            (200, false),
            (1000, true),
            (1003, false),
            (1004, true),
            (1100, false),
        ];
        let ev = run(20, PttMode::Toggle, &edges, 2000);
        assert_eq!(
            ev,
            vec![(120, PttEvent::Pressed), (1024, PttEvent::Released)]
        );
    }

    #[test]
    fn zero_window_passes_edges_through() {
        let ev = run(0, PttMode::Hold, &[(5, true), (6, false)], 10);
        assert_eq!(ev, vec![(5, PttEvent::Pressed), (6, PttEvent::Released)]);
    }
}
