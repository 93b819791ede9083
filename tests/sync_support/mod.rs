//! Helpers of the sync tests: devices (a real history file and the real
//! sync client), their turns and snapshots, and a fault-injecting TCP
//! proxy. Used by `sync.rs` and `multi_server.rs`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pichat::config::{SecretSource, SyncConfig};
use pichat::history::{HistoryHandle, NewConversation, NewMessage, OpenOptions, Role};
use pichat::store::actor::StoreThread;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Device {
    pub h: HistoryHandle,
    pub _t: StoreThread,
    pub cfg: SyncConfig,
}

pub fn sync_cfg(addr: SocketAddr, token_file: &std::path::Path) -> SyncConfig {
    SyncConfig {
        url: Some(format!("ws://{addr}/ws").parse().unwrap()),
        token: SecretSource::File(token_file.to_path_buf()),
        ca_file: None,
        keepalive: Duration::from_secs(5),
    }
}

pub fn device(dir: &std::path::Path, name: &str, addr: SocketAddr, token: &str) -> Device {
    let tf = dir.join(format!("{name}.token"));
    std::fs::write(&tf, token).unwrap();
    let (h, t) =
        HistoryHandle::open(&dir.join(format!("{name}.db")), &OpenOptions::default()).unwrap();
    Device {
        h,
        _t: t,
        cfg: sync_cfg(addr, &tf),
    }
}

/// A voice turn stored locally: a conversation (new or given) and two messages.
pub async fn turn(d: &Device, conv: Option<String>, q: &str, skew_ms: i64) -> String {
    let q = q.to_string();
    d.h.call(move |s| {
        let c = match conv {
            Some(c) => c,
            None => {
                s.create_conversation(NewConversation {
                    title: Some(q.clone()),
                    ..Default::default()
                })?
                .id
            }
        };
        let now = pichat::time::now_ms() + skew_ms;
        let mut m = NewMessage::new(&c, Role::User, q.clone());
        m.is_audio = true;
        m.created_at = Some(now);
        let u = s.append_message(m)?;
        let mut a = NewMessage::new(&c, Role::Assistant, format!("answer to {q}"));
        a.reply_to = Some(u.id);
        a.created_at = Some(now + 1);
        s.append_message(a)?;
        Ok(c)
    })
    .await
    .unwrap()
}

/// Everything a device holds: (conversation id, title, archived, [(message id, content)]), sorted.
pub async fn snapshot(d: &Device) -> Vec<(String, String, bool, Vec<(String, String)>)> {
    d.h.call(|s| {
        let doc = s.export(None)?;
        let mut v: Vec<_> = doc
            .conversations
            .into_iter()
            .map(|c| {
                let mut m: Vec<_> = c
                    .messages
                    .iter()
                    .map(|m| (m.id.clone(), m.content.clone()))
                    .collect();
                m.sort();
                (
                    c.conversation.id,
                    c.conversation.title,
                    c.conversation.archived,
                    m,
                )
            })
            .collect();
        v.sort();
        Ok(v)
    })
    .await
    .unwrap()
}

pub async fn sync_once(d: &Device) -> pichat::sync::Report {
    pichat::sync::once(&d.cfg, &d.h).await.unwrap()
}

/// A TCP proxy that injects faults: random cuts (often mid-frame), stalls
/// and delays, until `calm` is set.
pub async fn flaky_proxy(upstream: SocketAddr, calm: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let Ok((client, _)) = l.accept().await else {
                return;
            };
            n += 1;
            let calm = calm.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let mut rng = fastrand::Rng::with_seed(n);
                // Cut after this many bytes (either way), or stall, or delay.
                let budget = if calm.load(Ordering::SeqCst) {
                    u64::MAX
                } else {
                    rng.u64(200..20_000)
                };
                let stall = !calm.load(Ordering::SeqCst) && rng.u8(..) < 40;
                let delay = Duration::from_millis(rng.u64(0..20));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = [0u8; 1024];
                    let mut sent = 0u64;
                    loop {
                        let k = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => k,
                        };
                        let k = k.min((budget - sent.min(budget)) as usize);
                        if k == 0 || sw.write_all(&buf[..k]).await.is_err() {
                            return;
                        }
                        sent += k as u64;
                    }
                };
                let down = async {
                    let mut buf = [0u8; 1024];
                    let mut sent = 0u64;
                    loop {
                        let k = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => k,
                        };
                        if stall && sent > 500 {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        tokio::time::sleep(delay).await;
                        let k = k.min((budget - sent.min(budget)) as usize);
                        if k == 0 || cw.write_all(&buf[..k]).await.is_err() {
                            return;
                        }
                        sent += k as u64;
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    addr
}
