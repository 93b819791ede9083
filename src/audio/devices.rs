//! Finding cpal devices by name or id, and describing what they support
//! (for `pichat devices` and for "unknown device" errors).

use cpal::traits::{DeviceTrait, HostTrait};

use super::AudioError;
use crate::config::DeviceSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// One device as `pichat devices` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub id: String,
    pub name: String,
    pub is_default: bool,
    pub configs: Vec<String>,
    pub default_config: Option<String>,
}

fn label(d: &cpal::Device) -> (String, String) {
    let id = d.id().map(|i| i.to_string()).unwrap_or_else(|_| "?".into());
    let name = d
        .description()
        .map(|x| x.name().to_string())
        .unwrap_or_else(|_| d.to_string());
    (id, name)
}

fn devices(dir: Direction) -> Result<Vec<cpal::Device>, AudioError> {
    let host = cpal::default_host();
    let list: Vec<cpal::Device> = match dir {
        Direction::Input => host.input_devices().map(|i| i.collect()),
        Direction::Output => host.output_devices().map(|i| i.collect()),
    }
    .map_err(|e| AudioError::Other(format!("cannot list {} devices: {e}", dir.name())))?;
    Ok(list)
}

fn default_device(dir: Direction) -> Option<cpal::Device> {
    let host = cpal::default_host();
    match dir {
        Direction::Input => host.default_input_device(),
        Direction::Output => host.default_output_device(),
    }
}

/// True when `want` names this device: its full id (`alsa:hw:0,0`), its id
/// without the host (`hw:0,0`), or its name.
fn matches(want: &str, id: &str, name: &str) -> bool {
    want == id || id.split_once(':').is_some_and(|(_, rest)| rest == want) || want == name
}

/// Finds the device a config names.
pub fn find(spec: &DeviceSpec, dir: Direction) -> Result<cpal::Device, AudioError> {
    match spec {
        DeviceSpec::Default => default_device(dir).ok_or(AudioError::NoDefault { dir: dir.name() }),
        DeviceSpec::Named(want) => {
            // Fast path: open by id, without probing every PCM on the host
            // (which can take a second with plugins such as jack or pulse).
            let host_id = cpal::default_host().id();
            let id = if want.contains(':') && want.parse::<cpal::DeviceId>().is_ok() {
                want.clone()
            } else {
                format!("{}:{want}", host_id.name().to_lowercase())
            };
            if let Ok(id) = id.parse::<cpal::DeviceId>()
                && let Some(d) = cpal::default_host().device_by_id(&id)
            {
                let usable = match dir {
                    Direction::Input => d
                        .supported_input_configs()
                        .is_ok_and(|mut c| c.next().is_some()),
                    Direction::Output => d
                        .supported_output_configs()
                        .is_ok_and(|mut c| c.next().is_some()),
                };
                if usable {
                    return Ok(d);
                }
            }
            let all = devices(dir)?;
            let mut available = Vec::new();
            for d in all {
                let (id, name) = label(&d);
                if matches(want, &id, &name) {
                    return Ok(d);
                }
                available.push(if id == name {
                    id
                } else {
                    format!("{id} ({name})")
                });
            }
            Err(AudioError::UnknownDevice {
                dir: dir.name(),
                name: want.clone(),
                available,
            })
        }
        DeviceSpec::Wav(_) => Err(AudioError::Other("a wav: spec is not a device".into())),
        DeviceSpec::Pulse(_) => Err(AudioError::Other(
            "a pulse: spec is not an ALSA device".into(),
        )),
    }
}

/// A readable id or name of a device, for logs and errors.
pub fn describe(d: &cpal::Device) -> String {
    let (id, name) = label(d);
    if id == name {
        id
    } else {
        format!("{id} ({name})")
    }
}

/// One line per sample format and rate range, with the channel counts
/// merged ("1-32 ch, 4000-192000 Hz, i16").
fn summarize(ranges: impl Iterator<Item = cpal::SupportedStreamConfigRange>) -> Vec<String> {
    let mut groups: Vec<(String, u32, u32, u16, u16)> = Vec::new();
    for c in ranges {
        let key = c.sample_format().to_string();
        let (lo, hi, ch) = (c.min_sample_rate(), c.max_sample_rate(), c.channels());
        match groups
            .iter_mut()
            .find(|g| g.0 == key && g.1 == lo && g.2 == hi)
        {
            Some(g) => {
                g.3 = g.3.min(ch);
                g.4 = g.4.max(ch);
            }
            None => groups.push((key, lo, hi, ch, ch)),
        }
    }
    groups
        .into_iter()
        .map(|(f, lo, hi, cl, ch)| {
            let rate = if lo == hi {
                format!("{lo} Hz")
            } else {
                format!("{lo}-{hi} Hz")
            };
            let chans = if cl == ch {
                format!("{cl} ch")
            } else {
                format!("{cl}-{ch} ch")
            };
            format!("{chans}, {rate}, {f}")
        })
        .collect()
}

fn fmt_config(c: &cpal::SupportedStreamConfig) -> String {
    format!(
        "{} ch, {} Hz, {}",
        c.channels(),
        c.sample_rate(),
        c.sample_format()
    )
}

/// Every device of a direction with what it supports.
pub fn list(dir: Direction) -> Result<Vec<DeviceInfo>, AudioError> {
    let default_id = default_device(dir)
        .and_then(|d| d.id().ok())
        .map(|i| i.to_string());
    let mut out = Vec::new();
    for d in devices(dir)? {
        let (id, name) = label(&d);
        let (configs, default_config) = match dir {
            Direction::Input => (
                d.supported_input_configs()
                    .map(summarize)
                    .unwrap_or_default(),
                d.default_input_config().ok().map(|c| fmt_config(&c)),
            ),
            Direction::Output => (
                d.supported_output_configs()
                    .map(summarize)
                    .unwrap_or_default(),
                d.default_output_config().ok().map(|c| fmt_config(&c)),
            ),
        };
        out.push(DeviceInfo {
            is_default: default_id.as_deref() == Some(id.as_str()),
            id,
            name,
            configs,
            default_config,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matching_rules() {
        assert!(super::matches("alsa:hw:0,0", "alsa:hw:0,0", "USB Mic"));
        assert!(super::matches("hw:0,0", "alsa:hw:0,0", "USB Mic"));
        assert!(super::matches("USB Mic", "alsa:hw:0,0", "USB Mic"));
        assert!(!super::matches("hw:1,0", "alsa:hw:0,0", "USB Mic"));
    }
}
