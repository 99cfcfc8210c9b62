// Microphone capture on the audio thread: mono, resampled from the device rate to 24 kHz,
// converted to PCM16 and posted to the page in 20 ms frames (480 samples), each frame's
// buffer transferred, not copied. The page base64-encodes a frame into one
// `input_audio_buffer.append`.
//
// Message to the page: { pcm: Int16Array(480), peak: number (0..1, for the level meter) }.

import { Resampler, floatToPcm16 } from './resampler.js';

const OUT_RATE = 24000;
const FRAME = 480; // 20 ms at 24 kHz: small enough for quick turn detection, few messages

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is the AudioContext's rate, a global of the worklet scope.
    this.resampler = new Resampler(sampleRate, OUT_RATE);
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      // getUserMedia is asked for one channel; a device that gives two anyway is averaged.
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(mono.length);
        for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
      }
      this.collect(this.resampler.push(mono));
    }
    return true; // keep running while the input is silent or momentarily absent
  }

  collect(samples) {
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      this.frame[this.filled++] = s;
      const a = Math.abs(s);
      if (a > this.peak) this.peak = a;
      if (this.filled === FRAME) {
        const pcm = floatToPcm16(this.frame);
        this.port.postMessage({ pcm, peak: this.peak }, [pcm.buffer]);
        this.filled = 0;
        this.peak = 0;
      }
    }
  }
}

registerProcessor('parley-capture', CaptureProcessor);
