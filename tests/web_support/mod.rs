//! A real browser for the web app's tests: Debian's `chromium`, headless,
//! driven over WebDriver by its `chromedriver` (installed by
//! `scripts/deps.sh --test`; never a browser download). Each [`Browser`]
//! has its own chromedriver, a fresh profile and a download folder. A
//! failing test body gets a screenshot under `target/web-screenshots/`,
//! named in the failure message.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a step waits for the page (never asserted as a duration).
pub const WAIT: Duration = Duration::from_secs(20);

/// A phone's viewport (CSS pixels), and a desktop's.
pub const PHONE: (u32, u32) = (390, 844);
pub const DESKTOP: (u32, u32) = (1280, 800);

/// Where chromium's real binary is (the `/usr/bin/chromium` wrapper is a
/// shell script that adds flags of its own).
fn chromium_binary() -> Option<PathBuf> {
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn chromedriver_binary() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Fails the test with what to install when chromium is missing: the
/// browser tests are never skipped silently.
pub fn require_chromium() -> (PathBuf, PathBuf) {
    match (chromium_binary(), chromedriver_binary()) {
        (Some(c), Some(d)) => (c, d),
        _ => panic!(
            "the browser tests need Debian's chromium and chromium-driver: run scripts/deps.sh --test"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Options of one browser.
#[derive(Clone, Debug)]
pub struct Options {
    pub size: (u32, u32),
    /// A WAV file the fake microphone plays (chromium's fake capture device).
    pub mic_wav: Option<PathBuf>,
    /// Hosts that count as secure (for the microphone over plain http).
    pub secure_origins: Vec<String>,
    /// Accept the test server's self-made certificate.
    pub ignore_cert_errors: bool,
    /// The system prefers a dark colour scheme.
    pub dark: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: DESKTOP,
            mic_wav: None,
            secure_origins: vec![],
            ignore_cert_errors: false,
            dark: false,
        }
    }
}

/// A headless chromium under its own chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Child,
    pub dir: tempfile::TempDir,
    pub downloads: PathBuf,
    pub name: String,
}

impl Browser {
    pub async fn start(name: &str) -> Browser {
        Self::start_with(name, Options::default()).await
    }

    pub async fn start_with(name: &str, opts: Options) -> Browser {
        let (chromium, chromedriver) = require_chromium();
        let dir = tempfile::tempdir().expect("a temp dir");
        let downloads = dir.path().join("downloads");
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&downloads).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        // Its own process group, so the browser it starts goes with it.
        use std::os::unix::process::CommandExt;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={},{}", opts.size.0, opts.size.1),
        ];
        if let Some(wav) = &opts.mic_wav {
            args.push("--use-fake-device-for-media-stream".into());
            args.push(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ));
        }
        if !opts.secure_origins.is_empty() {
            args.push(format!(
                "--unsafely-treat-insecure-origin-as-secure={}",
                opts.secure_origins.join(",")
            ));
        }
        if opts.dark {
            args.push("--force-dark-mode".into());
            args.push("--blink-settings=preferredColorScheme=0".into());
        }
        if opts.ignore_cert_errors {
            args.push("--ignore-certificate-errors".into());
        }
        // A phone-sized viewport is emulated (a headless window is at least
        // 500 px wide), touch and all.
        let mobile = (opts.size.0 < 500).then(|| {
            json!({"deviceMetrics": {"width": opts.size.0, "height": opts.size.1, "pixelRatio": 2.0, "touch": true}})
        });
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        let mut caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        if let Some(m) = mobile {
            caps["goog:chromeOptions"]["mobileEmulation"] = m;
        }
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "cannot start chromium through chromedriver ({e}); its log: {}",
                    dir.path().join("chromedriver.log").display()
                ),
            }
        };
        Browser {
            client,
            driver,
            dir,
            downloads,
            name: name.to_string(),
        }
    }

    /// Runs a test body; on failure saves a screenshot (and the page's
    /// console state) and panics with their paths.
    pub async fn run<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if let Err(e) = body().await {
            let shot = self.shot("failure").await;
            let url = self
                .client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            panic!(
                "{}: {e:#}\n  page: {url}\n  screenshot: {}",
                self.name,
                shot.map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("none ({e})"))
            );
        }
    }

    /// Saves a screenshot as `target/web-screenshots/<test>-<label>.png`.
    pub async fn shot(&self, label: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{label}.png", self.name));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("open {url}"))
    }

    pub async fn resize(&self, (w, h): (u32, u32)) -> Result<()> {
        self.client.set_window_size(w, h).await?;
        Ok(())
    }

    /// The first element matching `css`, waiting for it to be displayed.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await
                && e.is_displayed().await.unwrap_or(false)
            {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!("no visible element `{css}` after {} s", WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some element matching `css` has text containing `text`;
    /// returns that element.
    pub async fn find_text(&self, css: &str, text: &str) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            seen.clear();
            for e in self
                .client
                .find_all(Locator::Css(css))
                .await
                .unwrap_or_default()
            {
                let t = e.text().await.unwrap_or_default();
                if t.contains(text) {
                    return Ok(e);
                }
                seen.push(t);
            }
            if Instant::now() > deadline {
                bail!("no `{css}` containing {text:?}; saw {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a script returns something truthy; returns it.
    pub async fn wait_js(&self, what: &str, script: &str) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script).await?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "waited {} s for {what} (`{script}` gave {v})",
                    WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    pub async fn js(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, vec![])
            .await
            .map_err(|e| anyhow!("script failed: {e}: {script}"))
    }

    /// Types into the element matching `css`.
    pub async fn type_in(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        e.send_keys(text)
            .await
            .with_context(|| format!("type into {css}"))
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css).await?;
        e.click().await.with_context(|| format!("click {css}"))
    }

    /// Presses keys as a keyboard does, wherever the focus is (shortcuts;
    /// WebDriver key codes such as `\u{E007}` for Enter).
    pub async fn keys(&self, text: &str) -> Result<()> {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let mut ka = KeyActions::new("keyboard".into());
        for c in text.chars() {
            ka = ka
                .then(KeyAction::Down { value: c })
                .then(KeyAction::Up { value: c });
        }
        self.client.perform_actions(ka).await?;
        Ok(())
    }

    /// The id of the focused element.
    pub async fn focused_id(&self) -> Result<String> {
        Ok(self
            .js("return document.activeElement && document.activeElement.id")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// A file that appeared in the download folder (complete, not `.crdownload`).
    pub async fn download(&self, ends_with: &str) -> Result<PathBuf> {
        let deadline = Instant::now() + WAIT;
        loop {
            for e in std::fs::read_dir(&self.downloads)?.flatten() {
                let p = e.path();
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                if n.ends_with(ends_with) && !n.ends_with(".crdownload") {
                    return Ok(p);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no download ending in {ends_with} in {}",
                    self.downloads.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cookies the browser holds for the current page's site.
    pub async fn cookies(&self) -> Result<Vec<fantoccini::cookies::Cookie<'static>>> {
        Ok(self.client.get_all_cookies().await?)
    }

    /// Ends the WebDriver session (the browser quits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the chromium it started (one process group).
        let pgid = self.driver.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
