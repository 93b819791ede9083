//! A button on a GPIO pin, through rppal (cargo feature `gpio`). The pin's
//! interrupt thread forwards raw edges; a task debounces them and applies the
//! mode (hold or toggle). Off a Pi, rppal's own error is reported with the
//! alternatives.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{PttError, PttHub};
use crate::config::PttConfig;

/// Keeps the pin (and its interrupt) alive.
pub struct GpioButton {
    #[cfg(feature = "gpio")]
    _pin: rppal::gpio::InputPin,
}

#[cfg(not(feature = "gpio"))]
impl GpioButton {
    pub fn arm(
        _: &PttConfig,
        _: PttHub,
        _: &TaskTracker,
        _: CancellationToken,
    ) -> Result<GpioButton, PttError> {
        Err(PttError::GpioNotBuilt)
    }
}

#[cfg(feature = "gpio")]
impl GpioButton {
    pub fn arm(
        cfg: &PttConfig,
        hub: PttHub,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<GpioButton, PttError> {
        use rppal::gpio::{Gpio, Level, Trigger};
        use std::time::Instant;

        use super::debounce::{Debouncer, ModeLogic};
        use crate::config::Pull;

        let pin_no = cfg.gpio_pin;
        let err = |e: rppal::gpio::Error| PttError::Gpio {
            pin: pin_no,
            cause: e.to_string(),
        };
        let gpio = Gpio::new().map_err(err)?;
        let pin = gpio.get(pin_no).map_err(err)?;
        let mut pin = match cfg.pull {
            Pull::Up => pin.into_input_pullup(),
            Pull::Down => pin.into_input_pulldown(),
            Pull::Off => pin.into_input(),
        };
        let active_low = cfg.active_low;
        let is_down = move |level: Level| (level == Level::Low) == active_low;
        let (edge_tx, mut edge_rx) = tokio::sync::mpsc::unbounded_channel::<(bool, Instant)>();
        pin.set_async_interrupt(Trigger::Both, None, move |ev| {
            let level = match ev.trigger {
                Trigger::RisingEdge => Level::High,
                _ => Level::Low,
            };
            let _ = edge_tx.send((is_down(level), Instant::now()));
        })
        .map_err(err)?;
        let mut debouncer = Debouncer::new(cfg.debounce, is_down(pin.read()));
        let mut mode = ModeLogic::new(cfg.mode);
        tracker.spawn(async move {
            loop {
                let deadline = debouncer.deadline();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    edge = edge_rx.recv() => match edge {
                        Some((down, at)) => { debouncer.edge(down, at); }
                        None => return,
                    },
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d.into()).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                if let Some(down) = debouncer.poll(Instant::now())
                    && let Some(e) = mode.button(down)
                {
                    hub.send(e);
                }
            }
        });
        Ok(GpioButton { _pin: pin })
    }
}

#[cfg(all(test, feature = "gpio"))]
mod tests {
    /// Off a Pi (and under qemu), rppal refuses with its own error, which we
    /// pass on with the alternatives.
    #[tokio::test]
    async fn off_a_pi_the_error_names_cause_and_alternatives() {
        if std::path::Path::new("/proc/device-tree/model").exists()
            && std::fs::read_to_string("/proc/device-tree/model")
                .unwrap_or_default()
                .contains("Raspberry")
        {
            return; // on a real Pi this test means nothing
        }
        let cfg = crate::config::resolve(&crate::config::RawConfig::default())
            .unwrap()
            .ptt;
        let (hub, _rx) = super::PttHub::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let err = super::GpioButton::arm(&cfg, hub, &tracker, Default::default())
            .err()
            .expect("no GPIO here");
        let msg = err.to_string();
        assert!(msg.contains("GPIO pin 17"), "{msg}");
        assert!(msg.contains("ptt.source = \"keyboard\""), "{msg}");
    }
}
