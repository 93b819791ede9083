//! Text-to-speech by a program that writes a WAV to stdout (espeak-ng,
//! piper...). The arguments are a list with `{text}` substituted; no shell
//! is involved, so the text cannot inject anything. Without `{text}` in the
//! arguments, the text goes to the program's stdin.

use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::audio::wav::{Limits, decode};

pub struct CommandTts {
    name: String,
    argv: Vec<String>,
    timeout: Duration,
    limits: Limits,
}

impl CommandTts {
    /// A program whose speech may be at most `max_speech` long.
    pub fn new(e: &EngineConfig, max_speech: Duration) -> Self {
        let argv = match &e.kind {
            EngineKind::Command { argv } => argv.clone(),
            _ => Vec::new(),
        };
        CommandTts {
            name: e.name.clone(),
            argv,
            timeout: e.timeout,
            limits: Limits::tts(max_speech),
        }
    }

    async fn run(&self, text: &str) -> Result<Vec<u8>> {
        let fail = |message: String| EngineError::Failed {
            engine: self.name.clone(),
            message,
        };
        let Some((prog, args)) = self.argv.split_first() else {
            return Err(EngineError::Config {
                engine: self.name.clone(),
                message: "empty command".into(),
            });
        };
        let uses_arg = args.iter().any(|a| a.contains("{text}"));
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args.iter().map(|a| a.replace("{text}", text)))
            .stdin(if uses_arg {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| EngineError::Config {
            engine: self.name.clone(),
            message: format!("cannot run {prog}: {e} (is it installed and on PATH?)"),
        })?;
        if !uses_arg && let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its input closes the
            // pipe: its exit status and stderr, below, say why.
            if let Err(e) = stdin.write_all(text.as_bytes()).await
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(fail(format!("cannot write the text: {e}")));
            }
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| EngineError::Timeout {
                engine: self.name.clone(),
                after: self.timeout,
            })?
            .map_err(|e| fail(e.to_string()))?;
        // 127 with no output: the program was not found (how a shell, or
        // an emulator that cannot report a failed exec, says it).
        if out.status.code() == Some(127) && out.stdout.is_empty() {
            return Err(EngineError::Config {
                engine: self.name.clone(),
                message: format!("cannot run {prog}: not found (is it installed and on PATH?)"),
            });
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err
                .trim()
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(fail(format!("{prog} failed ({}): {tail}", out.status)));
        }
        Ok(out.stdout)
    }
}

#[async_trait]
impl TextToSpeech for CommandTts {
    fn name(&self) -> &str {
        &self.name
    }

    async fn synthesize(&self, text: &str) -> Result<EventStream<AudioChunk>> {
        let bytes = self.run(text).await?;
        let clip =
            decode::clip_from_bytes(&bytes, &self.limits).map_err(|e| EngineError::Protocol {
                engine: self.name.clone(),
                message: format!("the program's output is not a usable WAV: {e}"),
            })?;
        Ok(EventStream::from_vec(vec![Ok(AudioChunk {
            pcm: clip.pcm,
            rate: clip.rate,
        })]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(argv: &[&str]) -> CommandTts {
        CommandTts {
            name: "t".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
            limits: Limits::tts(Duration::from_secs(1)),
        }
    }

    #[tokio::test]
    async fn text_is_an_argument_never_shell() {
        // `sh -c 'printf %s "$1"' _ {text}`: the text arrives as one argument.
        let e = engine(&["sh", "-c", "printf %s \"$1\"", "_", "{text}"]);
        let out = e.run("a; rm -rf / `x` $(y)").await.unwrap();
        assert_eq!(out, b"a; rm -rf / `x` $(y)");
        let e = engine(&["cat"]);
        assert_eq!(e.run("via stdin").await.unwrap(), b"via stdin");
    }

    #[tokio::test]
    async fn failures_are_reported() {
        let e = engine(&["pichat-no-such-program-xyz", "{text}"]);
        assert!(matches!(e.run("x").await, Err(EngineError::Config { .. })));
        let e = engine(&["sh", "-c", "echo boom >&2; exit 3"]);
        let err = e.run("x").await.unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
        let mut e = engine(&["sleep", "5"]);
        e.timeout = Duration::from_millis(100);
        assert!(matches!(e.run("x").await, Err(EngineError::Timeout { .. })));
        let e = engine(&["echo", "not a wav"]);
        assert!(e.synthesize("x").await.is_err());
    }

    #[tokio::test]
    async fn streamed_wav_headers_are_mended_and_hostile_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = crate::engines::openai::wav_bytes(&[1, 2, 3], 16_000);
        // As a pipe writer leaves them: unknown sizes.
        w[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        w[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let f = dir.path().join("streamed.wav");
        std::fs::write(&f, &w).unwrap();
        let e = engine(&["cat", f.to_str().unwrap()]);
        let mut s = e.synthesize("x").await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().pcm, vec![1, 2, 3]);
        // A program claiming 4,294,967,291 Hz, or speaking past the limit (1 s here).
        w[24..28].copy_from_slice(&4_294_967_291u32.to_le_bytes());
        std::fs::write(&f, &w).unwrap();
        let err = e.synthesize("x").await.err().unwrap();
        assert!(
            err.to_string().contains("sample rate 4294967291 Hz"),
            "{err}"
        );
        assert!(err.is_retryable(), "the next engine is tried");
        let long = crate::engines::openai::wav_bytes(&vec![0; 16_001], 16_000);
        std::fs::write(&f, &long).unwrap();
        let err = e.synthesize("x").await.err().unwrap();
        assert!(err.to_string().contains("tts.max_seconds"), "{err}");
    }
}
