-- The events of post.lua, each connection waiting 10 ms on average between requests: the
-- offered rate is connections / (10 ms + latency), so load.sh picks the connection count for a
-- target rate.
-- PACING=poisson: each wait is random, exponentially distributed with a mean of 10 ms, which
-- keeps the connections out of step with one another, as independent visitors are (each still
-- waits for its answer before it waits again: a closed loop). Otherwise every wait is exactly
-- 10 ms: connections answered at the same moment (by one group commit) send again at the same
-- moment, fall in step, and arrive in bursts. wrk takes whole milliseconds; the rounding keeps
-- the mean at 10. LuaJIT's generator starts from the same seed in every run (and in every wrk
-- thread: load.sh runs one), so runs draw the same waits.
-- load.sh runs wrk from the repository root.
dofile("benches/load/post.lua")
local poisson = os.getenv("PACING") == "poisson"
function delay()
  if poisson then
    return math.floor(-10 * math.log(1 - math.random()) + 0.5)
  end
  return 10
end
