-- The events of post.lua, each connection waiting 10 ms between requests: the offered rate is
-- connections / (10 ms + latency), so load.sh picks the connection count for a target rate.
-- load.sh runs wrk from the repository root.
dofile("benches/load/post.lua")
function delay()
  return 10
end
