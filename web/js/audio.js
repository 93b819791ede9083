// Speech in the browser: the microphone recorded as a 16 kHz mono 16-bit WAV
// (what speech_to_text wants), and playing a WAV answer (text_to_speech).

const RATE = 16000;
/// Longest recording; the server's speech_to_text frame limit is 8 MiB of
/// base64, about 4 minutes at 16 kHz: stop well before.
export const MAX_SECONDS = 120;

/// Float samples at `from` Hz → 16 kHz, by averaging (a box filter is
/// enough for speech recognition; the browser's own resampler is used
/// when it can record at 16 kHz directly).
export function downsample(samples, from) {
  if (from === RATE) return samples;
  const ratio = from / RATE;
  const n = Math.floor(samples.length / ratio);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = Math.floor(i * ratio);
    const b = Math.min(samples.length, Math.max(a + 1, Math.floor((i + 1) * ratio)));
    let sum = 0;
    for (let j = a; j < b; j++) sum += samples[j];
    out[i] = sum / (b - a);
  }
  return out;
}

/// A 16-bit PCM mono WAV file of float samples in [-1, 1].
export function wav(samples, rate = RATE) {
  const buf = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF");
  v.setUint32(4, 36 + samples.length * 2, true);
  str(8, "WAVE");
  str(12, "fmt ");
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true);
  v.setUint16(22, 1, true);
  v.setUint32(24, rate, true);
  v.setUint32(28, rate * 2, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  str(36, "data");
  v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Uint8Array(buf);
}

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/// Why the microphone cannot be used here, or null.
export function micUnavailable() {
  if (!window.isSecureContext) return "the microphone needs https:// (or localhost): set server.tls_cert and server.tls_key";
  if (!navigator.mediaDevices?.getUserMedia) return "this browser cannot record audio";
  if (!window.AudioWorkletNode) return "this browser cannot process audio (no AudioWorklet)";
  return null;
}

/// One recording: `start()`, then `stop()` resolves with the WAV bytes.
export class Recorder {
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    try {
      this.ctx = new AudioContext({ sampleRate: RATE });
    } catch {
      this.ctx = new AudioContext();
    }
    await this.ctx.audioWorklet.addModule(new URL("rec-worklet.js", import.meta.url));
    this.chunks = [];
    this.length = 0;
    const src = this.ctx.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.ctx, "pichat-tap");
    this.node.port.onmessage = (e) => {
      if (this.length < MAX_SECONDS * this.ctx.sampleRate) {
        this.chunks.push(e.data);
        this.length += e.data.length;
      } else if (this.onLimit) {
        this.onLimit();
      }
    };
    src.connect(this.node);
    this.source = src;
  }

  async stop() {
    const rate = this.ctx.sampleRate;
    this.source?.disconnect();
    this.node?.disconnect();
    this.stream?.getTracks().forEach((t) => t.stop());
    await this.ctx?.close();
    const all = new Float32Array(this.length);
    let o = 0;
    for (const c of this.chunks) { all.set(c, o); o += c.length; }
    return { wav: wav(downsample(all, rate)), seconds: this.length / rate };
  }

  cancel() {
    this.source?.disconnect();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.ctx?.close();
  }
}

let current = null;

/// Plays WAV bytes; a second call stops the first.
export function play(bytes) {
  stopPlaying();
  const url = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
  const a = new Audio(url);
  current = { a, url };
  a.addEventListener("ended", stopPlaying, { once: true });
  return a.play().then(() => a);
}

export function stopPlaying() {
  if (!current) return;
  current.a.pause();
  URL.revokeObjectURL(current.url);
  current = null;
}
