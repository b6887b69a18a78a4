// Apply a stored theme before first paint so the page never flashes the wrong one.
try {
  var t = localStorage.getItem("lb.theme");
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
} catch (e) { /* storage may be disabled; follow the system */ }
