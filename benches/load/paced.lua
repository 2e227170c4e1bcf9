-- The event of post.lua, each connection waiting 10 ms between requests: the offered rate is
-- connections / (10 ms + latency), so load.sh picks the connection count for a target rate.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_url":"https://example.com/retail","td_path":"/retail"}'
function delay()
  return 10
end
