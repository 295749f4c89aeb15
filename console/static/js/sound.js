// The audible cue for critical and high alerts: generated tones (Web Audio), no sound files.
let ctx = null;

// Browsers start audio only after a user gesture: the click that opened the duty watch.
export function unlockAudio() {
  try {
    ctx = ctx || new AudioContext();
    if (ctx.state === "suspended") ctx.resume();
  } catch { ctx = null; }
}

export function cue(severity) {
  if (!ctx) return;
  const tones = severity === "critical" ? [880, 660, 880, 660] : [740, 740];
  let at = ctx.currentTime;
  for (const f of tones) {
    const o = ctx.createOscillator();
    const g = ctx.createGain();
    o.frequency.value = f;
    o.type = "sine";
    g.gain.setValueAtTime(0.0001, at);
    g.gain.exponentialRampToValueAtTime(0.3, at + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, at + 0.22);
    o.connect(g).connect(ctx.destination);
    o.start(at);
    o.stop(at + 0.25);
    at += 0.28;
  }
  document.body.dataset.lastCue = `${severity}@${Date.now()}`;
}
