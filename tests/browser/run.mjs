// The real-browser test: `p13n-edge demo` (proxy, emulator, demo site, TLS listener) on free
// ports, driven by Debian's headless Chromium through playwright-core.
//
// It proves that
//  - a preflight from the allowed origin is echoed with credentials and max-age, and a foreign
//    origin gets no CORS headers and a 403 on POST (checked with plain fetch from Node);
//  - the demo shop on the allowed origin receives offers in the browser;
//  - the same page on a foreign origin (127.0.0.1 instead of localhost) is blocked by the browser;
//  - a page using td-js-sdk's fetchPersonalization, with `endpoint` set to the proxy's TLS
//    listener, receives offers (over HTTP/2), its placeholder key and token replaced by the proxy;
//  - with signed visitor ids ([service.identity] mode = "signed-cookie"), the SDK page gets the
//    edge's cookie and keeps its id on the next visit, and a page that forges another visitor's
//    id in the body gets only its own offers, in pass-through and in fast mode; a secret
//    rotated (new + previous, then new alone, each by SIGHUP) keeps the visitor's id.
// Screenshots are kept in tests/browser/output/.
//
// Usage: node run.mjs [path to the p13n-edge binary]   (scripts/browser-test does the setup)

import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const binary = resolve(process.argv[2] || join(root, "target/debug/p13n-edge"));
const output = join(here, "output");
mkdirSync(output, { recursive: true });

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

async function waitFor(url, tries = 200) {
  for (let i = 0; i < tries; i++) {
    try {
      await fetch(url);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${url} never answered`);
}

const [proxy, admin, emulator, tls, site, siteTls] = await Promise.all(
  Array.from({ length: 6 }, freePort),
);
const work = mkdtempSync(join(tmpdir(), "p13n-edge-browser-"));
const siteOrigin = `http://localhost:${site}`;
const foreignOrigin = `http://127.0.0.1:${site}`;
// The SDK page is served over https: a real site and its edge (www.shop.example and
// edge.shop.example) are same-site, so the browser sends the first-party `_td` cookie along.
const sdkOrigin = `https://localhost:${siteTls}`;

// A throwaway certificate for localhost; the browser context ignores that nobody signed it.
execFileSync("openssl", [
  "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
  "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "2",
  "-keyout", join(work, "edge.key"), "-out", join(work, "edge.pem"),
], { stdio: "ignore" });

// conf/demo.toml, moved to this run's ports and directories.
const config = readFileSync(join(root, "conf/demo.toml"), "utf8")
  .replace('"127.0.0.1:8080"', `"127.0.0.1:${proxy}"`)
  .replace('"127.0.0.1:9090"', `"127.0.0.1:${admin}"`)
  .replaceAll('"http://127.0.0.1:8081"', `"http://127.0.0.1:${emulator}"`)
  .replaceAll('"http://localhost:3000"', `"${siteOrigin}", "${sdkOrigin}"`)
  .replace(/^upgrade_sock = .*$/m, `upgrade_sock = "${join(work, "upgrade.sock")}"`)
  .replace(/^pid_file = .*$/m, `pid_file = "${join(work, "pid")}"`)
  .replace(/^dir = .*$/m, `dir = "${join(work, "spool")}"`)
  .replaceAll('api_key_file = "demo.key"', `api_key_file = "${join(root, "conf/demo.key")}"`)
  .replace('secret_file = "demo-visitor.secret"', `secret_file = "${join(root, "conf/demo-visitor.secret")}"`)
  + ["signed", "signed_fast"].map((name) => `
[[service]]
name = "${name}"
base_url = "http://127.0.0.1:${emulator}"
account_id = "1"
instance_id = "1"
api_key_file = "${join(root, "conf/demo.key")}"
[service.identity]
mode = "signed-cookie"
secret_file = "${join(work, "visitor.secret")}"
[service.cors]
allowed_origins = ["${siteOrigin}", "${sdkOrigin}"]
[service.cache]
mode = "${name === "signed" ? "pass-through" : "fast"}"
[service.tokens]
web = "1/1/00000000000000000000000000000001"
[[service.route]]
database = "${name}_db"
table = "pageviews"
public = true
token = "web"
`).join("")
  + `\n[server.tls]\nlisten = "127.0.0.1:${tls}"\ncert_file = "edge.pem"\nkey_file = "edge.key"\n`;
writeFileSync(join(work, "demo.toml"), config);
const oldSecret = "a-browser-test-secret-of-more-than-32-bytes-old";
const newSecret = "a-browser-test-secret-of-more-than-32-bytes-new";
writeFileSync(join(work, "visitor.secret"), `${oldSecret}\n`);

const demo = spawn(binary, [
  "demo",
  "--config", join(work, "demo.toml"),
  "--rules", join(root, "conf/demo-rules.toml"),
  "--site", `127.0.0.1:${site}`,
  "--site-tls", `127.0.0.1:${siteTls}`,
  "--sdk", join(here, "node_modules/td-js-sdk/dist/td.min.js"),
], {
  stdio: ["ignore", "ignore", "pipe"],
});
let demoLog = "";
demo.stderr.on("data", (d) => { demoLog += d; });

let browser;
let failed = false;
try {
  await waitFor(`${siteOrigin}/`);
  await waitFor(`http://127.0.0.1:${proxy}/`);
  const api = `http://127.0.0.1:${proxy}/public/demo_db/pageviews`;

  // 1. CORS as seen on the wire.
  const preflight = await fetch(api, {
    method: "OPTIONS",
    headers: {
      Origin: siteOrigin,
      "Access-Control-Request-Method": "POST",
      "Access-Control-Request-Headers": "content-type, authorization, wp13n-token",
    },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get("access-control-allow-origin"), siteOrigin);
  assert.equal(preflight.headers.get("access-control-allow-credentials"), "true");
  assert.equal(preflight.headers.get("access-control-max-age"), "600");
  const foreign = await fetch(api, {
    method: "POST",
    headers: { Origin: "https://evil.example", "Content-Type": "application/json" },
    body: JSON.stringify({ td_client_id: "x" }),
  });
  assert.equal(foreign.status, 403);
  assert.equal(foreign.headers.get("access-control-allow-origin"), null);
  assert.equal((await foreign.json()).code, 3007);
  console.log("ok: preflight echoed with credentials and max-age; foreign origin 403 without CORS headers");

  // 2. The browser.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // The TLS listener uses a throwaway certificate made above.
      "--ignore-certificate-errors",
    ],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(m.text()));

  await page.goto(`${siteOrigin}/`);
  await page.click("#view");
  await page.waitForSelector('#status[data-state="ok"]', { timeout: 15000 });
  await page.waitForSelector('li[data-offer="offer_for_women"]');
  await page.screenshot({ path: join(output, "allowed-origin.png") });
  console.log("ok: the allowed origin received offers:", await page.textContent("#status"));

  await page.goto(`${foreignOrigin}/`);
  await page.click("#view");
  await page.waitForSelector('#status[data-state="blocked"]', { timeout: 15000 });
  assert.equal(await page.locator("#offers li").count(), 0);
  await page.screenshot({ path: join(output, "foreign-origin.png") });
  assert.ok(consoleLines.some((l) => /CORS/.test(l)), consoleLines.join("\n"));
  console.log("ok: the foreign origin was blocked by the browser:", await page.textContent("#status"));

  // 3. td-js-sdk against the TLS listener; note the protocol Chromium used.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const protocols = [];
  const sent = { bodies: [], cookies: [] };
  cdp.on("Network.requestWillBeSent", ({ request }) => {
    if (request.method === "POST" && request.url.startsWith(`https://localhost:${tls}/`)) {
      sent.bodies.push(request.postData || "");
    }
  });
  cdp.on("Network.requestWillBeSentExtraInfo", ({ headers }) => {
    if (headers[":method"] === "POST" && headers[":authority"] === `localhost:${tls}`) {
      sent.cookies.push(headers.cookie || "");
    }
  });
  cdp.on("Network.responseReceived", ({ response }) => {
    if (response.url.startsWith(`https://localhost:${tls}/`)) {
      protocols.push(response.protocol);
      if (response.status >= 300) console.error("the TLS listener answered", response.status);
    }
  });
  await page.goto(`${sdkOrigin}/sdk.html`);
  await page.waitForSelector('#status[data-state="ok"], #status[data-state="error"]', { timeout: 15000 });
  const sdkStatus = await page.textContent("#status");
  await page.screenshot({ path: join(output, "td-js-sdk.png") });
  assert.equal(await page.getAttribute("#status", "data-state"), "ok", sdkStatus);
  await page.waitForSelector('li[data-offer="offer_for_women"]');
  assert.ok(protocols.includes("h2"), `protocols: ${protocols}`);
  // Anonymous mode: the SDK sent no id in the body; the proxy found the visitor in `_td`.
  assert.ok(sent.bodies.length > 0 && sent.bodies.every((b) => !b.includes("td_client_id")), sent.bodies.join());
  assert.ok(sent.cookies.some((c) => /(^|; )_td=sdk-/.test(c)), sent.cookies.join());
  console.log(`ok: td-js-sdk's fetchPersonalization received offers over ${protocols.join(", ")}:`, sdkStatus);

  // 4. Signed visitor ids. The SDK page on a signed-cookie route: the first visit gets the
  // edge's cookie, the next one sends it and keeps its id.
  const setCookies = [];
  cdp.on("Network.responseReceivedExtraInfo", ({ headers }) => {
    const set = headers["set-cookie"] || headers["Set-Cookie"];
    if (set) setCookies.push(set);
  });
  sent.cookies.length = 0;
  const sdkIds = [];
  for (let visit = 0; visit < 2; visit++) {
    await page.goto(`${sdkOrigin}/sdk.html?database=signed_db`);
    await page.waitForSelector('#status[data-state="ok"], #status[data-state="error"]', { timeout: 15000 });
    assert.equal(await page.getAttribute("#status", "data-state"), "ok", await page.textContent("#status"));
    await page.waitForSelector('li[data-offer="offer_for_women"]');
    const vid = (await context.cookies(`https://localhost:${tls}/`)).find((c) => c.name === "p13n_vid");
    assert.ok(vid && vid.httpOnly && vid.secure && vid.sameSite === "Lax", JSON.stringify(vid));
    sdkIds.push(vid.value.split(".")[1]);
  }
  assert.equal(sdkIds[0], sdkIds[1]);
  assert.equal(setCookies.filter((s) => s.startsWith("p13n_vid=")).length, 1, setCookies.join("\n"));
  assert.ok(sent.cookies.some((c) => c.includes("p13n_vid=1.")), sent.cookies.join());
  await page.screenshot({ path: join(output, "td-js-sdk-signed.png") });
  console.log("ok: td-js-sdk on a signed-cookie route got the edge's cookie and kept its id:", sdkIds[0]);

  // A victim and an attacker, each in a browser of their own, calling with credentials from
  // the shop's origin. The attacker names the victim in the body.
  const post = (pg, database, event) => pg.evaluate(async ({ url, event }) => {
    const r = await fetch(url, {
      method: "POST", credentials: "include",
      headers: { "Content-Type": "text/plain" }, body: JSON.stringify(event),
    });
    // No offer qualifies: the vendor's "200 without payload", an empty body.
    const text = await r.text();
    return { status: r.status, offers: Object.keys((text && JSON.parse(text).offers) || {}) };
  }, { url: `http://localhost:${proxy}/public/${database}/pageviews`, event });
  const idIn = async (ctx) => {
    const vid = (await ctx.cookies(`http://localhost:${proxy}/`)).find((c) => c.name === "p13n_vid");
    return vid && vid.value.split(".")[1];
  };
  for (const database of ["signed_db", "signed_fast_db"]) {
    const victimContext = await browser.newContext();
    const attackerContext = await browser.newContext();
    const victim = await victimContext.newPage();
    const attacker = await attackerContext.newPage();
    await victim.goto(`${siteOrigin}/`);
    await attacker.goto(`${siteOrigin}/`);
    const first = await post(victim, database, { td_path: "/retail/women", product_category: "women" });
    assert.equal(first.status, 200);
    const own = await post(victim, database, { td_path: "/home" });
    assert.ok(own.offers.includes("offer_for_women"), JSON.stringify(own));
    const victimId = await idIn(victimContext);
    assert.ok(victimId, "the victim's browser holds the edge's cookie");
    const forged = await post(attacker, database, { td_client_id: victimId, td_path: "/home" });
    assert.equal(forged.status, 200);
    assert.ok(!forged.offers.includes("offer_for_women"), JSON.stringify(forged));
    const attackerId = await idIn(attackerContext);
    assert.ok(attackerId && attackerId !== victimId, `${attackerId} ${victimId}`);
    const still = await post(victim, database, { td_path: "/home" });
    assert.ok(still.offers.includes("offer_for_women"), JSON.stringify(still));
    assert.equal(await idIn(victimContext), victimId);
    await victimContext.close();
    await attackerContext.close();
    console.log(`ok: ${database}: a forged body id got the attacker only their own offers (${JSON.stringify(forged.offers)})`);
  }

  // 5. Rotation: the new secret first and the old one still accepted, then the old one
  // dropped; each by SIGHUP, as an operator would. The visitor keeps their id and offers.
  const reloads = async () => {
    const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith('p13n_edge_config_reloads_total{result="ok"}'));
    return line ? Number(line.split(" ").pop()) : 0;
  };
  const reload = async (secrets) => {
    const before = await reloads();
    writeFileSync(join(work, "visitor.secret"), secrets.join("\n") + "\n");
    demo.kill("SIGHUP");
    for (let i = 0; i < 100 && (await reloads()) === before; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(await reloads(), before + 1, "the reload was not seen");
  };
  const rotatedContext = await browser.newContext();
  const rotated = await rotatedContext.newPage();
  await rotated.goto(`${siteOrigin}/`);
  await post(rotated, "signed_db", { td_path: "/retail/women", product_category: "women" });
  const rotatedId = await idIn(rotatedContext);
  const tokenOf = async () =>
    (await rotatedContext.cookies(`http://localhost:${proxy}/`)).find((c) => c.name === "p13n_vid").value;
  const oldToken = await tokenOf();
  await reload([newSecret, oldSecret]);
  const during = await post(rotated, "signed_db", { td_path: "/home" });
  assert.ok(during.offers.includes("offer_for_women"), JSON.stringify(during));
  assert.equal(await idIn(rotatedContext), rotatedId);
  assert.notEqual(await tokenOf(), oldToken, "re-issued under the new secret");
  await reload([newSecret]);
  const after = await post(rotated, "signed_db", { td_path: "/home" });
  assert.ok(after.offers.includes("offer_for_women"), JSON.stringify(after));
  assert.equal(await idIn(rotatedContext), rotatedId);
  await rotatedContext.close();
  console.log("ok: the secret rotated twice by SIGHUP; the visitor kept their id and offers:", rotatedId);
} catch (e) {
  failed = true;
  console.error("FAILED:", e);
  console.error("demo log (tail):\n" + demoLog.split("\n").slice(-30).join("\n"));
} finally {
  if (browser) await browser.close();
  demo.kill("SIGINT");
  rmSync(work, { recursive: true, force: true });
}
console.log(`screenshots: ${output}`);
process.exit(failed ? 1 : 0);
