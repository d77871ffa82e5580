// A JsSIP phone driven by its URL: ?role=&user=&password=&ws=wss://...&call=<user to call>.
// It registers; a callee answers what comes; a caller calls once registered and hangs up
// a second after the call is confirmed. Every event is POSTed to /event, where the test
// reads them in order.
'use strict';
const q = new URLSearchParams(location.search);
const role = q.get('role');
let chain = Promise.resolve();
function report(ev, data) {
  const body = JSON.stringify({ role, ev, data: data === undefined ? '' : String(data) });
  // One at a time: the test reads them in the order they happened.
  chain = chain.then(() => fetch('/event', { method: 'POST', body })).catch(() => {});
}
window.addEventListener('error', (e) => report('error', e.message));
try {
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(q.get('ws'))],
    uri: `sip:${q.get('user')}@sipcluster.local`,
    password: q.get('password'),
    register: true,
    session_timers: false,
    user_agent: 'sipcluster-test JsSIP',
  });
  ua.on('connected', () => report('connected'));
  ua.on('registered', () => {
    report('registered');
    const target = q.get('call');
    if (target) {
      ua.call(`sip:${target}@sipcluster.local`, {
        mediaConstraints: { audio: true, video: false },
        pcConfig: { iceServers: [] },
      });
    }
  });
  ua.on('registrationFailed', (e) => report('registrationFailed', e.cause));
  ua.on('newRTCSession', (e) => {
    const s = e.session;
    s.on('progress', () => report('progress'));
    // The media addresses offered, so the test can see none is off loopback.
    s.on('sdp', (ev) => {
      const c = (ev.sdp.match(/^a=candidate:.*$|^c=.*$/gm) || []).join('|');
      report('sdp', `${ev.originator}:${c}`);
    });
    s.on('accepted', () => report('accepted'));
    s.on('confirmed', () => {
      report('confirmed');
      if (s.direction === 'outgoing') {
        setTimeout(() => s.terminate(), 1000);
      }
    });
    s.on('ended', (ev) => report('ended', `${ev.originator}:${ev.cause}`));
    s.on('failed', (ev) => report('failed', `${ev.originator}:${ev.cause}`));
    if (s.direction === 'incoming') {
      report('incoming', e.request.from.uri.user);
      s.answer({ mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } });
    }
  });
  ua.start();
} catch (e) {
  report('error', e);
}
