-- POST the file named by $ADAPTER_BENCH_BODY as JSON on every request; wrk_report.lua's
-- `done` prints the figures as one JSON line.
local file = assert(io.open(os.getenv("ADAPTER_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
dofile(os.getenv("ADAPTER_BENCH_REPORT"))
