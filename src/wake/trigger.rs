//! When a score becomes a detection, per word: the score must reach the
//! threshold in `level` consecutive windows, and after a detection the
//! word is deaf for the refractory time (one utterance, one detection).
//! Pure: positions are sample counts of the stream.

/// The trigger of one word.
#[derive(Debug, Clone)]
pub struct Trigger {
    threshold: f32,
    level: u32,
    refractory: u64,
    run: u32,
    quiet_until: u64,
}

impl Trigger {
    /// `refractory` in samples (16 kHz).
    pub fn new(threshold: f32, level: u32, refractory: u64) -> Trigger {
        Trigger {
            threshold,
            level: level.max(1),
            refractory,
            run: 0,
            quiet_until: 0,
        }
    }

    /// A window's score at position `at`; true when this is a detection.
    pub fn score(&mut self, score: f32, at: u64) -> bool {
        if at < self.quiet_until {
            self.run = 0;
            return false;
        }
        if score >= self.threshold {
            self.run += 1;
        } else {
            self.run = 0;
        }
        if self.run >= self.level {
            self.run = 0;
            self.quiet_until = at + self.refractory;
            return true;
        }
        false
    }

    /// Whether the word is deaf at `at` (a detection's refractory time).
    pub fn deaf(&self, at: u64) -> bool {
        at < self.quiet_until
    }

    /// A detection made elsewhere (a second opinion) at `at`: the word is
    /// deaf for the refractory time from there, as after its own.
    pub fn fired(&mut self, at: u64) {
        self.run = 0;
        self.quiet_until = at + self.refractory;
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_windows_then_refractory() {
        let mut t = Trigger::new(0.8, 3, 1000);
        let s = |t: &mut Trigger, v: &[(f32, u64)]| -> Vec<bool> {
            v.iter().map(|(x, at)| t.score(*x, *at)).collect()
        };
        // Two windows over, one under: the run starts again.
        assert_eq!(
            s(
                &mut t,
                &[(0.9, 0), (0.9, 10), (0.5, 20), (0.9, 30), (0.9, 40)]
            ),
            [false; 5]
        );
        // The third in a row: a detection, exactly at the threshold too.
        assert!(t.score(0.8, 50));
        // Deaf until 1050, whatever the score.
        assert_eq!(s(&mut t, &[(1.0, 60), (1.0, 500), (1.0, 1049)]), [false; 3]);
        assert_eq!(
            s(&mut t, &[(1.0, 1050), (1.0, 1060), (1.0, 1070)]),
            [false, false, true]
        );
        // Just under the threshold never fires.
        let mut t = Trigger::new(0.8, 1, 0);
        assert!(!t.score(0.799, 0));
        assert!(t.score(0.8, 1));
    }
}
