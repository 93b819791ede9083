// The sign-in page: says why it is shown (wrong token, expired session,
// signed out) and keeps where to go after signing in.
const q = new URLSearchParams(location.search);
const msg = document.getElementById("signin-msg");
const reasons = {
  invalid: "That token is unknown or revoked. Check it, or make a new one.",
  expired: "Your session has ended. Sign in again.",
  signedout: "You are signed out.",
  missing: "Enter a token.",
};
const why = q.get("error") || (q.has("expired") ? "expired" : q.has("signedout") ? "signedout" : null);
if (why && reasons[why]) {
  msg.textContent = reasons[why];
  msg.hidden = false;
  if (why === "signedout") msg.className = "help";
}
const next = q.get("next");
// Only a path of this site (no //host, no scheme): never an open redirect.
if (next && next.startsWith("/") && !next.startsWith("//") && !next.includes("\\")) {
  document.getElementById("next").value = next;
}
