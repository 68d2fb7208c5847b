// The capture worklet: float samples of channel 0 in, 16-bit little-endian PCM out, posted
// to the page in blocks of about 50 ms at the context's own sample rate.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.max(128, Math.round(sampleRate / 20));
    this.block = new Int16Array(this.size);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input.length === 0) return true; // nothing connected yet
    const samples = input[0];
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.peak = Math.max(this.peak, Math.abs(s));
      this.block[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === this.size) {
        const out = this.block.buffer; // transferred: the block is detached after this
        this.port.postMessage({ pcm: out, peak: this.peak }, [out]);
        this.block = new Int16Array(this.size);
        this.filled = 0;
        this.peak = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
