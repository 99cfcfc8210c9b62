// Streaming sample-rate conversion for mono Float32 audio, shared by the capture worklet
// (device rate -> 24 kHz) and the page (24 kHz reply audio -> the AudioContext's rate).
//
// Band-limited interpolation: each output sample at input position t is
//   y(t) = sum_k x[k] * fc * sinc(fc * (t - k)) * blackman((t - k) / half),  |t - k| < half
// where fc = min(1, outRate / inRate) (normalized to the input Nyquist, a little below it) so
// that downsampling also low-passes (no aliasing) and upsampling leaves the band untouched.
// About 2 * half multiply-adds per output sample: ~0.8 M/s for 48 kHz <-> 24 kHz, trivial.
//
// Why not let the browser resample: an AudioContext created at 24 kHz cannot take a
// microphone stream in Firefox ("different sample-rate" NotSupportedError), and one context at
// the device rate for both directions keeps the echo canceller's reference and the mic in step.

const ZERO_CROSSINGS = 8; // kernel half-width in output-band periods: ~70 dB stop band
const CUTOFF = 0.94; // fraction of the lower Nyquist kept: a transition band for the window

export class Resampler {
  /**
   * @param {number} inRate  input sample rate (Hz)
   * @param {number} outRate output sample rate (Hz)
   */
  constructor(inRate, outRate) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.passthrough = inRate === outRate;
    this.step = inRate / outRate; // input samples per output sample
    this.fc = Math.min(1, outRate / inRate) * CUTOFF;
    this.half = Math.ceil(ZERO_CROSSINGS / this.fc); // kernel half-width in input samples
    // Pending input; buf[0] is input sample `base`. Starts with `half` zeros of history so
    // the first output is centered on the first real sample.
    this.buf = new Float32Array(4096);
    this.len = this.half;
    this.pos = this.half; // input position (in buf) of the next output sample
    this.out = new Float32Array(1024); // reused output storage
  }

  /** Samples of delay between input and output, in input samples (the kernel's look-ahead). */
  get latency() {
    return this.passthrough ? 0 : this.half;
  }

  /**
   * Feed input samples; returns the output samples now computable. The returned array is a
   * view of reused storage: copy it (or consume it) before the next call.
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  push(input) {
    if (this.passthrough) return input;
    this._append(input);
    // An output sample at pos needs input up to pos + half; size the output for the most.
    const most = Math.floor((this.len - 1 - this.half - this.pos) / this.step) + 1;
    if (this.out.length < most + 2) this.out = new Float32Array(2 * most + 2);
    const { buf, fc, half, step } = this;
    let pos = this.pos;
    let produced = 0;
    while (pos + half <= this.len - 1) {
      const first = Math.ceil(pos - half); // >= 0: input older than pos - half was dropped
      const last = Math.floor(pos + half);
      let acc = 0;
      for (let k = first; k <= last; k++) acc += buf[k] * kernel(pos - k, fc, half);
      this.out[produced++] = acc;
      pos += step;
    }
    // Drop input no future output can reach (older than pos - half).
    const drop = Math.max(0, Math.floor(pos - half));
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      pos -= drop;
    }
    this.pos = pos;
    return this.out.subarray(0, produced);
  }

  /** The output still held back by the kernel's look-ahead (the input is padded with zeros). */
  flush() {
    if (this.passthrough) return new Float32Array(0);
    const tail = this.push(new Float32Array(2 * this.half + 1));
    const copy = tail.slice();
    this.reset();
    return copy;
  }

  /** Forget all pending input (a new, unrelated stream follows). */
  reset() {
    this.buf.fill(0, 0, this.half);
    this.len = this.half;
    this.pos = this.half;
  }

  _append(input) {
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
  }
}

/** Windowed sinc at distance x (input samples) for cutoff fc; 0 outside (-half, half). */
function kernel(x, fc, half) {
  if (x === 0) return fc;
  const ax = Math.abs(x);
  if (ax >= half) return 0;
  const px = Math.PI * fc * x;
  const w = 0.42 + 0.5 * Math.cos((Math.PI * ax) / half) + 0.08 * Math.cos((2 * Math.PI * ax) / half);
  return (fc * Math.sin(px)) / px * w;
}

/** Float32 [-1, 1] -> PCM16 little-endian (clipped). */
export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
  }
  return out;
}

/** PCM16 little-endian bytes -> Float32 [-1, 1). */
export function pcm16ToFloat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 0x8000;
  return out;
}
