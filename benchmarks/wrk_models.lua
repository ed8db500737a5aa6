-- Each request names one of four models at random (serve_multiplexed_model_id), then
-- the run reports as wrk_report.lua does.
dofile(os.getenv("WRK_REPORT_LUA"))
math.randomseed(os.time())
request = function()
  local headers = {["serve_multiplexed_model_id"] = "m" .. math.random(0, 3)}
  return wrk.format("GET", nil, headers)
end
