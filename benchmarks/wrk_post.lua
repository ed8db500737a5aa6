-- POST an empty JSON object on every request, for apps that answer on POST (LitServe's
-- /predict, which parses the body as JSON); wrk_report.lua, named by $WRK_REPORT_LUA,
-- supplies `done`, which prints the figures as one JSON line.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
dofile(os.getenv("WRK_REPORT_LUA"))
