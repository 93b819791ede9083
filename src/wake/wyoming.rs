//! A Wyoming wake word service (`kind = "wyoming"` in `[wake] engines`,
//! e.g. wyoming-openwakeword on port 10400): `describe` → `info` lists the
//! words it offers, `detect {names}` picks ours, then the microphone is
//! streamed as `audio-chunk`s and the service answers `detection {name,
//! timestamp}`. The refractory time is applied here; thresholds are the
//! service's. A lost connection fails the stream (the chain reconnects
//! with backoff or moves on).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::trigger::Trigger;
use super::{Result, WakeEngine, WakeError, WakeEvent, WakeStream, Word};
use crate::engines::wyoming::{Event, EventReader};

pub struct WyomingWake {
    name: String,
    host: String,
    port: u16,
    timeout: Duration,
    words: Vec<Word>,
}

/// The comparable form of a word's name: "ok_nabu_v0.1" and "okay_nabu"
/// are the same word.
pub fn normalize(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase().replace([' ', '-'], "_");
    if let Some(i) = n.find("_v").filter(|&i| {
        n[i + 2..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    }) {
        n.truncate(i);
    }
    if let Some(rest) = n.strip_prefix("ok_") {
        n = format!("okay_{rest}");
    }
    n
}

/// The wake words an `info` event offers.
pub fn offered(info: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for program in info["wake"].as_array().into_iter().flatten() {
        for model in program["models"].as_array().into_iter().flatten() {
            if let Some(n) = model["name"].as_str() {
                out.push(n.to_string());
            }
        }
    }
    out
}

impl WyomingWake {
    pub fn new(name: &str, host: &str, port: u16, timeout: Duration, words: Vec<Word>) -> Self {
        WyomingWake {
            name: name.into(),
            host: host.into(),
            port,
            timeout,
            words,
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn proto(&self, message: impl Into<String>) -> WakeError {
        WakeError::Protocol {
            engine: self.name.clone(),
            message: message.into(),
        }
    }

    /// Connects and asks what the service offers (for `doctor` too).
    pub async fn describe(
        &self,
    ) -> Result<(EventReader<OwnedReadHalf>, OwnedWriteHalf, Vec<String>)> {
        let connect = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr()));
        let stream = match connect.await {
            Err(_) => {
                return Err(WakeError::Connect {
                    engine: self.name.clone(),
                    addr: self.addr(),
                    cause: format!("no answer within {:.1} s", self.timeout.as_secs_f64()),
                });
            }
            Ok(Err(e)) => {
                return Err(WakeError::Connect {
                    engine: self.name.clone(),
                    addr: self.addr(),
                    cause: e.to_string(),
                });
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        w.write_all(&Event::new("describe", json!({})).encode())
            .await
            .map_err(|e| self.proto(format!("connection lost: {e}")))?;
        let mut reader = EventReader::new(r);
        let info = loop {
            let ev = tokio::time::timeout(self.timeout, reader.next())
                .await
                .map_err(|_| self.proto("no answer to describe"))?
                .map_err(|e| self.proto(e))?
                .ok_or_else(|| self.proto("the service closed the connection"))?;
            if ev.kind == "info" {
                break ev.data;
            }
        };
        Ok((reader, w, offered(&info)))
    }
}

#[async_trait]
impl WakeEngine for WyomingWake {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self) -> Result<Box<dyn WakeStream>> {
        let (mut reader, mut w, offered) = self.describe().await?;
        // Our words, by the service's names.
        let mut names = Vec::new();
        let mut words = Vec::new();
        for w in &self.words {
            match offered.iter().find(|o| normalize(o) == normalize(&w.name)) {
                Some(o) => {
                    names.push(o.clone());
                    words.push((
                        normalize(o),
                        w.name.clone(),
                        Trigger::new(0.0, 1, w.refractory.as_millis() as u64 * 16),
                    ));
                }
                None => {
                    return Err(WakeError::Config {
                        engine: self.name.clone(),
                        message: format!(
                            "does not offer \"{}\" (it offers: {})",
                            w.name,
                            if offered.is_empty() {
                                "nothing".to_string()
                            } else {
                                offered.join(", ")
                            }
                        ),
                    });
                }
            }
        }
        for ev in [
            Event::new("detect", json!({ "names": names })),
            Event::new(
                "audio-start",
                json!({"rate": 16000, "width": 2, "channels": 1}),
            ),
        ] {
            w.write_all(&ev.encode())
                .await
                .map_err(|e| self.proto(format!("connection lost: {e}")))?;
        }
        let (tx, rx) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Some(ev)) => {
                        if ev.kind == "detection" {
                            let name = ev.data["name"].as_str().unwrap_or_default().to_string();
                            if tx.send(Ok(name)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx
                            .send(Err("the service closed the connection".to_string()))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::new(WyomingStream {
            engine: self.name.clone(),
            timeout: self.timeout,
            writer: w,
            detections: rx,
            _reader: AbortOnDropHandle::new(reader),
            words,
            position: 0,
        }))
    }
}

struct WyomingStream {
    engine: String,
    timeout: Duration,
    writer: OwnedWriteHalf,
    detections: mpsc::Receiver<std::result::Result<String, String>>,
    _reader: AbortOnDropHandle<()>,
    /// (service's name normalized, our name, refractory).
    words: Vec<(String, String, Trigger)>,
    position: u64,
}

#[async_trait]
impl WakeStream for WyomingStream {
    async fn push(&mut self, pcm: &[i16], out: &mut Vec<WakeEvent>) -> Result<()> {
        let fail = |m: String| WakeError::Protocol {
            engine: self.engine.clone(),
            message: m,
        };
        let mut ev = Event::new(
            "audio-chunk",
            json!({"rate": 16000, "width": 2, "channels": 1, "timestamp": self.position / 16}),
        );
        ev.payload = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        // The microphone waits for nobody: a service that stops reading for
        // a second is failed over.
        let limit = self.timeout.min(std::time::Duration::from_secs(1));
        match tokio::time::timeout(limit, self.writer.write_all(&ev.encode())).await {
            Err(_) => return Err(fail("the service stopped taking audio".into())),
            Ok(Err(e)) => return Err(fail(format!("connection lost: {e}"))),
            Ok(Ok(())) => {}
        }
        self.position += pcm.len() as u64;
        loop {
            match self.detections.try_recv() {
                Ok(Ok(name)) => {
                    let n = normalize(&name);
                    if let Some((_, ours, trigger)) = self.words.iter_mut().find(|w| w.0 == n)
                        && trigger.score(1.0, self.position)
                    {
                        out.push(WakeEvent::Detected {
                            word: ours.clone(),
                            score: 1.0,
                            end: self.position,
                            second_opinion: false,
                        });
                    }
                }
                Ok(Err(e)) => return Err(fail(e)),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(fail("the connection is gone".into()));
                }
            }
        }
    }

    fn words(&self) -> Vec<String> {
        self.words.iter().map(|w| w.1.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::chain::Chain;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// A fake wake service speaking the real protocol: offers `ok_nabu_v0.1`,
    /// answers `detection` after `after` audio chunks, and hangs up after
    /// `hang_up` chunks.
    async fn fake(after: usize, hang_up: usize) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = EventReader::new(r);
                    let mut chunks = 0;
                    while let Ok(Some(ev)) = r.next().await {
                        match ev.kind.as_str() {
                            "describe" => {
                                let info = json!({"wake": [{"name": "openwakeword", "models": [{"name": "ok_nabu_v0.1"}]}]});
                                let _ = w.write_all(&Event::new("info", info).encode()).await;
                            }
                            "audio-chunk" => {
                                chunks += 1;
                                if chunks == after {
                                    let d = json!({"name": "ok_nabu_v0.1", "timestamp": 0});
                                    let _ = w.write_all(&Event::new("detection", d).encode()).await;
                                }
                                if chunks == hang_up {
                                    return;
                                }
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        port
    }

    fn word() -> Word {
        Word {
            name: "okay_nabu".into(),
            threshold: None,
            trigger_level: 1,
            refractory: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn detections_come_back_by_our_name() {
        let port = fake(10, usize::MAX).await;
        let e = WyomingWake::new(
            "oww",
            "127.0.0.1",
            port,
            Duration::from_secs(2),
            vec![word()],
        );
        let mut s = e.open().await.unwrap();
        assert_eq!(s.words(), vec!["okay_nabu"]);
        let mut out = Vec::new();
        for _ in 0..40 {
            s.push(&[0; 320], &mut out).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            matches!(&out[..], [WakeEvent::Detected { word, .. }] if word == "okay_nabu"),
            "{out:?}"
        );
        // A word the service does not offer is a clear error.
        let mut w = word();
        w.name = "hey_jarvis".into();
        let e = WyomingWake::new("oww", "127.0.0.1", port, Duration::from_secs(2), vec![w]);
        let err = e.open().await.err().unwrap().to_string();
        assert!(
            err.contains("does not offer \"hey_jarvis\" (it offers: ok_nabu_v0.1)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_service_that_hangs_up_fails_over_to_the_next() {
        let first = fake(usize::MAX, 5).await;
        let second = fake(20, usize::MAX).await;
        let mk = |name: &str, port| -> Arc<dyn crate::wake::WakeEngine> {
            Arc::new(WyomingWake::new(
                name,
                "127.0.0.1",
                port,
                Duration::from_secs(2),
                vec![word()],
            ))
        };
        let mut chain = Chain::new(vec![mk("first", first), mk("second", second)]);
        let mut out = Vec::new();
        for _ in 0..200 {
            chain.push(&[0; 320], &mut out).await;
            if !out.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(chain.active(), Some("second"));
        assert!(matches!(&out[..], [WakeEvent::Detected { .. }]), "{out:?}");
        // Nothing listening at all: the chain stays quiet (the button works).
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut chain = Chain::new(vec![mk("gone", gone)]);
        chain.push(&[0; 320], &mut out).await;
        assert_eq!(chain.active(), None);
    }

    #[test]
    fn names_match_across_versions() {
        assert_eq!(normalize("ok_nabu_v0.1"), "okay_nabu");
        assert_eq!(normalize("okay_nabu"), "okay_nabu");
        assert_eq!(normalize("Hey Jarvis"), "hey_jarvis");
        assert_eq!(normalize("hey_jarvis_v0.1"), "hey_jarvis");
        assert_ne!(normalize("hey_mycroft"), normalize("hey_jarvis"));
        let info = json!({"wake": [{"name": "openwakeword", "models": [{"name": "ok_nabu_v0.1"}, {"name": "alexa_v0.1"}]}]});
        assert_eq!(offered(&info), vec!["ok_nabu_v0.1", "alexa_v0.1"]);
        assert!(offered(&json!({})).is_empty());
    }
}
