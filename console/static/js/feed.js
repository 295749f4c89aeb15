// The live alert feed (Server-Sent Events). One EventSource per console; the browser resumes
// after a dropped connection with Last-Event-ID, so nothing is lost. Views subscribe with `onFeed`.
import { api } from "./api.js";

const TOPICS = ["alert.opened", "alert.updated", "alert.cleared", "alert.acknowledged", "alert.resolved",
  "alert.escalated", "alert.suspended", "rollcall.requested", "feed.reset"];
let source = null;
let watchId = null;
const listeners = new Set();
let statusListener = () => {};

export function onFeed(fn) { listeners.add(fn); return () => listeners.delete(fn); }
export function onFeedStatus(fn) { statusListener = fn; }

export function openFeed(watch, onEnded) {
  if (source && watchId === watch.id) {
    // Already open (the officer came back to the view, or switched language): say so again.
    statusListener(source.readyState === EventSource.OPEN ? "live" : "reconnecting");
    return;
  }
  closeFeed();
  watchId = watch.id;
  source = new EventSource(`/api/v1/alerts/stream/live?watch=${encodeURIComponent(watch.id)}`);
  source.onopen = () => statusListener("live");
  source.onerror = () => {
    const closed = source && source.readyState === EventSource.CLOSED;
    statusListener(closed ? "closed" : "reconnecting");
    // The browser gives up only when the server refused (the watch or the sign-in ended), or
    // the page is going away; a moment later the watch is checked (the page is gone by then).
    if (closed) {
      const w = watch;
      closeFeed();
      setTimeout(async () => {
        let state;
        try { state = await api(`/alerts/watch/${encodeURIComponent(w.id)}`); } catch { return; }
        if (state.open) openFeed(w, onEnded);
        else onEnded("closed");
      }, 2000);
    }
  };
  for (const topic of TOPICS) {
    source.addEventListener(topic, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      for (const fn of listeners) fn(topic, data, e.lastEventId);
    });
  }
  source.addEventListener("end", () => { closeFeed(); onEnded("end"); });
}

export function closeFeed() {
  if (source) source.close();
  source = null;
  watchId = null;
}
