// The operator console in a real browser (Playwright driving Debian's chromium, headless),
// against a real `dialer up` with an API key, short mock calls and a webhook receiver that
// fails until told otherwise. Any console error, page error, failed request or unexpected
// error answer fails the run. Run by dialer/tests/console.rs; screenshots go to $SCREENSHOTS
// when it is set.
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";

// playwright-core from the cache the test command installs it into (ESM ignores NODE_PATH).
const require = createRequire(path.join(process.env.NODE_MODULES || ".", "noop.js"));
const { chromium } = require("playwright-core");

const base = process.env.BASE_URL;
const key = process.env.API_KEY;
const shots = process.env.SCREENSHOTS || "";
const problems = [];
let expectedStatus = new Set();

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

// A webhook receiver: 500 to everything until healed, then 200.
let healed = false;
let delivered = 0;
const receiver = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    if (healed) delivered += 1;
    res.writeHead(healed ? 200 : 500).end();
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const hook = "http://127.0.0.1:" + receiver.address().port + "/hook";

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
page.on("console", (m) => {
  // A failed load is checked by its answer below (with the answers a step expects).
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push("console error: " + m.text());
});
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("requestfailed", (r) => {
  const aborted = (r.failure() || {}).errorText === "net::ERR_ABORTED";
  // Leaving a page closes its event stream and any refresh in flight: not a failure.
  if (!aborted) problems.push("request failed: " + r.url() + " " + (r.failure() || {}).errorText);
});
page.on("response", (r) => {
  if (r.status() >= 400 && !expectedStatus.has(r.status())) problems.push("answer " + r.status() + ": " + r.url());
});

async function shot(name) {
  if (shots) await page.screenshot({ path: path.join(shots, name + ".png") });
}

try {
  // Log in: a wrong key is refused, the right one opens the console.
  await page.goto(base + "/");
  check(page.url().endsWith("/console/login"), "sent to the login page: " + page.url());
  await shot("login");
  expectedStatus = new Set([401]);
  await page.fill("#key", "not-the-key-0123456789");
  await page.click("button[type=submit]");
  await page.getByText("That is not an API key of this server.").waitFor();
  expectedStatus = new Set();
  await page.fill("#key", key);
  await page.click("button[type=submit]");
  await page.waitForURL(base + "/");

  // A webhook endpoint that fails every request for now.
  await page.goto(base + "/console/webhooks");
  await page.fill("#url", hook);
  await page.fill("#wdescription", "console test receiver");
  await page.click("form.stack button[type=submit]");
  await page.getByText("Endpoint added.").waitFor();

  // A campaign from a CSV list with bad rows: the report lists them by line.
  let csv = "Name;Mobile;Postal Code\r\n";
  for (let i = 0; i < 120; i++) csv += "Row " + i + ";(212) 555-" + String(1000 + i) + ";10001\r\n";
  csv += "Bad;call me;\r\nWorse;555 01;\r\nEmpty;;\r\n";
  await page.goto(base + "/console/campaigns/new");
  await page.fill("#name", "console-campaign");
  await page.fill("#max_concurrent_calls", "4");
  await page.fill("#max_attempts", "2");
  await page.fill("#base_delay", "100ms");
  await page.fill("#max_delay", "200ms");
  await page.check("input[name=rules_off]");
  await page.setInputFiles("#targets", { name: "list.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
  await page.click("form.stack button[type=submit]");
  await page.getByText("120 numbers registered from 123 rows").waitFor();
  const lines = await page.$$eval("table.rejected tbody tr td:first-child", (tds) => tds.map((t) => t.textContent));
  check(JSON.stringify(lines) === JSON.stringify(["122", "123", "124"]), "rejected lines " + lines);
  await shot("import");

  // Edit it: a higher cap and a weight.
  await page.click("a.button");
  await page.waitForSelector("#progress");
  await page.click("a:has-text('Edit')");
  await page.fill("#max_concurrent_calls", "6");
  await page.fill("#weight", "2");
  await page.click("form.stack button[type=submit]");
  await page.getByText("cap 6 · weight 2").waitFor();

  // Start it, pause and resume it, and watch the progress bar reach 100 %.
  await page.click("button:has-text('Start')");
  await page.waitForSelector("#status.in_progress");
  await page.click("button:has-text('Pause')");
  await page.waitForSelector("#status.paused");
  await page.click("button:has-text('Resume')");
  await page.waitForSelector("#status.in_progress");
  await page.waitForFunction(() => document.getElementById("progress").value === 100, null, { timeout: 90000 });
  await page.waitForSelector("#status.completed", { timeout: 30000 });
  check((await page.textContent("#completed")) !== "0", "calls completed");
  await shot("campaign");

  // Completing is confirmed first: a second campaign, completed before it starts.
  await page.goto(base + "/console/campaigns/new");
  await page.fill("#name", "to-complete");
  await page.setInputFiles("#targets", { name: "l.csv", mimeType: "text/csv", buffer: Buffer.from("phone\n+12125559999\n") });
  await page.click("form.stack button[type=submit]");
  await page.click("a.button");
  await page.click("a:has-text('Complete')");
  await page.getByText("This cannot be undone.").waitFor();
  await page.click("button:has-text('Yes, complete it')");
  await page.waitForSelector("#status.completed");

  await page.goto(base + "/");
  await page.waitForSelector("text=console-campaign");
  await shot("campaigns");

  // Do-not-call: upload, search, remove, on the global list and on a campaign's own.
  await page.goto(base + "/console/dnc");
  await page.setInputFiles("#file", { name: "dnc.csv", mimeType: "text/csv", buffer: Buffer.from("phone_number,reason\n+12125550100,opt_out\n+12125550101,opt_out\n") });
  await page.click("form[enctype] button[type=submit]");
  await page.getByText("2 numbers added to the list.").waitFor();
  await page.fill("#number", "+12125550100");
  await page.click("button:has-text('Search')");
  await page.getByText("is on the global list").waitFor();
  await shot("dnc");
  await page.click("button:has-text('Remove from the list')");
  await page.getByText("+12125550100 removed from the list.").waitFor();
  await page.fill("#number", "+12125550100");
  await page.click("button:has-text('Search')");
  await page.getByText("+12125550100 is not on this list.").waitFor();
  await page.selectOption("#upload-list", { label: "Campaign console-campaign" });
  await page.setInputFiles("#file", { name: "c.csv", mimeType: "text/csv", buffer: Buffer.from("phone_number\n+12125550199\n") });
  await page.click("form[enctype] button[type=submit]");
  await page.getByText("1 numbers added to the list.").waitFor();
  await page.selectOption("#list", { label: "Campaign console-campaign" });
  await page.fill("#number", "+12125550199");
  await page.click("button:has-text('Search')");
  await page.getByText(/\+12125550199 is on the [0-9a-f-]{36} list/).waitFor();

  // The campaign's events went dead at the failing receiver: replay them once it answers.
  const d0 = Date.now();
  do {
    await page.goto(base + "/console/webhooks");
    if (Number(await page.textContent("td.dead")) > 0) break;
    await new Promise((r) => setTimeout(r, 500));
  } while (Date.now() - d0 < 30000);
  healed = true;
  await shot("webhooks");
  await page.click("button:has-text('Replay')");
  const sent = await page.getByText(/\d+ dead letters sent again\./).textContent();
  const dead = Number(sent.match(/\d+/)[0]);
  check(dead > 0, "dead letters replayed: " + sent);
  const t0 = Date.now();
  while (delivered < dead && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 200));
  check(delivered >= dead, "replayed " + delivered + " of " + dead);

  await page.goto(base + "/console/live");
  await page.waitForSelector("#global");
  await shot("live");

  // On a phone's screen, the campaigns page still reads.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(base + "/");
  await page.waitForSelector("text=console-campaign");

  await page.click("nav button.link");
  await page.waitForURL(base + "/console/login");
} catch (e) {
  problems.push(String(e.stack || e));
} finally {
  await browser.close();
  receiver.close();
}
if (problems.length > 0) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log("console ok: " + delivered + " webhook deliveries replayed");
