-- One fixed ~110-byte event, as a browser would post it.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_url":"https://example.com/retail","td_path":"/retail"}'
