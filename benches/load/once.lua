-- Each of post.lua's 1024 visitors once, then the thread stops: warms a `fast` proxy's offer
-- cache (its next answers are hits) without spooling many more events than there are visitors.
-- A few connections' worth of requests may start after the 1024th and repeat a visitor (a hit).
-- wrk still waits out its -d, so load.sh keeps it short. Run with -t1 (one counter).
dofile("benches/load/post.lua")
local answered = 0
response = function(status, headers, body)
  answered = answered + 1
  if answered >= 1024 then
    wrk.thread:stop()
  end
end
