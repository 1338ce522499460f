/*
 * The Redis side of the limits: three Lua scripts (Redis 7.0, Lua 5.1) doing
 * limit.c's arithmetic atomically for a fleet.  They must agree with limit.c
 * to the millisecond; tests/unit/check_limits_redis.c runs both side by side.
 *
 * Numbers.  Lua numbers are doubles: exact for integers below 2^53, and every
 * count here stays far below that (epoch ms ~2^41, limits and token counts are
 * capped at DSV4_LIMIT_COUNT_MAX = 10^15 < 2^50).  Integers go back to Redis
 * through string.format('%d'), never tostring (which switches to exponent
 * form past 14 digits).  Scripts replicate as effects (the Redis 7 default),
 * so calling TIME before writing is allowed.
 *
 * Keys.  KEYS[1] is the tenant's base "<prefix>{<tenant>}:"; the scripts
 * append rpm, tpm, conc, d:<yyyymmdd> and m:<yyyymm>.  All share the hash tag,
 * so they sit on the tenant's cluster slot, and the day and month keys can
 * only be named once the script has read the clock.  The metering sets
 * <prefix>tenants:d:<yyyymmdd> / tenants:m:<yyyymm> are global keys on
 * another slot: the finish script and the all-tenants usage script are
 * therefore not cluster-safe (single node or a non-cluster deployment).
 *   rpm, tpm   hash second -> count, one field per charged second still in
 *              the window (stale fields are deleted by the next charge)
 *   conc       zset lease id -> expiry ms
 *   d:, m:     hash "budget" (tokens charged to the daily / monthly budget),
 *              "metered" (1 once the tenant was metered in the period) and
 *              the dsv4_usage fields that are not 0
 * A key's TTL is set when it is created (a window's on each new second), not
 * on every write: fewer commands per request.
 * TTLs: windows 120 s; conc at least the longest lease; days 3 days; months
 * 93 days; the tenants sets likewise.
 *
 * admit   KEYS[1] base; ARGV now_ms (<0: TIME), tokens, lease_id, lease_ms,
 *         rpm, tpm, concurrency, daily, monthly (<=0: unlimited)
 *         -> array of 13 integers: allowed, reason, limit_requests,
 *            remaining_requests, reset_requests_ms, limit_tokens,
 *            remaining_tokens, reset_tokens_ms, retry_after_ms, then the
 *            reservation time_ms, tokens, day, month (all 0 when rejected)
 * finish  KEYS[1] base; ARGV prefix, tenant, now_ms, admitted (0/1),
 *         time_ms, reserved tokens, day, month, tokens used, lease_id,
 *         then the five dsv4_usage fields in dsv4_usage_fields order
 *         -> status OK
 * usage   KEYS[1] base and ARGV prefix, now_ms, tenant: one tenant;
 *         no KEYS and ARGV prefix, now_ms: every tenant in the day's or the
 *         month's tenants set, sorted
 *         -> array: day (integer yyyymmdd), month (integer yyyymm), then per
 *            tenant an array of 11: tenant (string), the five usage fields
 *            of the day, the five of the month (integers)
 */
#include "internal.h"

#define DSV4_LUA_USAGE_FIELD(f) "'" #f "',"

/* the admit script names the reasons by number */
_Static_assert(DSV4_LIMIT_RPM == 1 && DSV4_LIMIT_TPM == 2 && DSV4_LIMIT_CONCURRENCY == 3
               && DSV4_LIMIT_DAILY == 4 && DSV4_LIMIT_MONTHLY == 5, "reason numbers");

/* the calendar, the clock and the window readers all three share */
#define DSV4_LUA_COMMON                                                       \
    "local SLOTS = " DSV4_LIMIT_STR(DSV4_LIMIT_SLOTS) "\n"                    \
    "local DAY = 86400000\n"                                                  \
    "local BUDGET = '" DSV4_LIMIT_BUDGET_FIELD "'\n"                          \
    "local FIELDS = {" DSV4_USAGE_FIELDS(DSV4_LUA_USAGE_FIELD) "}\n"          \
    "local TTL_WINDOW = " DSV4_LIMIT_STR(DSV4_LIMIT_TTL_WINDOW_S) "\n"        \
    "local TTL_DAY = " DSV4_LIMIT_STR(DSV4_LIMIT_TTL_DAY_S) "\n"              \
    "local TTL_MONTH = " DSV4_LIMIT_STR(DSV4_LIMIT_TTL_MONTH_S) "\n"          \
    "local floor = math.floor\n"                                              \
    "local function int(x) return string.format('%d', x) end\n"               \
    /* calendar.c's formulas */                                               \
    "local function from_civil(y, m, d)\n"                                    \
    "  if m <= 2 then y = y - 1 end\n"                                        \
    "  local era = floor(y / 400)\n"                                          \
    "  local yoe = y - era * 400\n"                                           \
    "  local mp = m > 2 and m - 3 or m + 9\n"                                 \
    "  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100)\n"           \
    "              + floor((153 * mp + 2) / 5) + d - 1\n"                     \
    "  return era * 146097 + doe - 719468\n"                                  \
    "end\n"                                                                   \
    /* -> yyyymmdd, yyyymm, end of the day, end of the month (ms) */          \
    "local function period(now)\n"                                            \
    "  local days = floor(now / DAY)\n"                                       \
    "  local z = days + 719468\n"                                             \
    "  local era = floor(z / 146097)\n"                                       \
    "  local doe = z - era * 146097\n"                                        \
    "  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524)\n"     \
    "                     - floor(doe / 146096)) / 365)\n"                    \
    "  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))\n"   \
    "  local mp = floor((5 * doy + 2) / 153)\n"                               \
    "  local d = doy - floor((153 * mp + 2) / 5) + 1\n"                       \
    "  local m = mp < 10 and mp + 3 or mp - 9\n"                              \
    "  local y = yoe + era * 400\n"                                           \
    "  if m <= 2 then y = y + 1 end\n"                                        \
    "  local ny, nm = y, m + 1\n"                                             \
    "  if nm == 13 then ny, nm = y + 1, 1 end\n"                              \
    "  return y * 10000 + m * 100 + d, y * 100 + m, (days + 1) * DAY,\n"      \
    "         from_civil(ny, nm, 1) * DAY\n"                                  \
    "end\n"                                                                   \
    "local function clock(arg)\n"                                             \
    "  local now = tonumber(arg)\n"                                           \
    "  if now < 0 then\n"                                                     \
    "    local t = redis.call('TIME')\n"                                      \
    "    now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)\n"        \
    "  end\n"                                                                 \
    "  return now\n"                                                          \
    "end\n"                                                                   \
    /* a window hash as second -> count, and its newest second (nil: empty) */\
    "local function window(key)\n"                                            \
    "  local h = redis.call('HGETALL', key)\n"                                \
    "  local w, newest = {}, nil\n"                                           \
    "  for i = 1, #h, 2 do\n"                                                 \
    "    local t = tonumber(h[i])\n"                                          \
    "    w[t] = tonumber(h[i + 1])\n"                                         \
    "    if newest == nil or t > newest then newest = t end\n"                \
    "  end\n"                                                                 \
    "  return w, newest\n"                                                    \
    "end\n"                                                                   \
    /* the effective second (limit.c: a clock a little behind stands still) */\
    "local function second(newest, now_s)\n"                                  \
    "  if newest ~= nil and now_s < newest and now_s > newest - SLOTS then\n" \
    "    return newest\n"                                                     \
    "  end\n"                                                                 \
    "  return now_s\n"                                                        \
    "end\n"

const char dsv4_limit_lua_admit[] =
    DSV4_LUA_COMMON
    "local function sum(w, e)\n"
    "  local n = 0\n"
    "  for t = e - SLOTS + 1, e do n = n + (w[t] or 0) end\n"
    "  return n\n"
    "end\n"
    "local function wait(w, e, now, used, cost, limit)\n"
    "  local t = e - SLOTS + 1\n"
    "  while t < e do\n"
    "    used = used - (w[t] or 0)\n"
    "    if used + cost <= limit then break end\n"
    "    t = t + 1\n"
    "  end\n"
    "  return (t + SLOTS) * 1000 - now\n"
    "end\n"
    "local function charge(key, w, e, cost)\n"
    "  local stale = {}\n"
    "  for t in pairs(w) do\n"
    "    if t <= e - SLOTS or t > e then stale[#stale + 1] = t end\n"
    "  end\n"
    "  for i, t in ipairs(stale) do w[t] = nil; stale[i] = int(t) end\n"
    "  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end\n"
    "  w[e] = (w[e] or 0) + cost\n"
    /* a second's first charge: its TTL outlives the window from now on */
    "  if redis.call('HINCRBY', key, int(e), int(cost)) == cost then\n"
    "    redis.call('EXPIRE', key, TTL_WINDOW)\n"
    "  end\n"
    "end\n"
    "local function report(w, e, now, limit, used)\n"
    "  local rem, reset = 0, 0\n"
    "  if limit > used then rem = limit - used end\n"
    "  if limit <= 0 then return 0, rem, 0 end\n"
    "  for t = e, e - SLOTS + 1, -1 do\n"
    "    if (w[t] or 0) > 0 then reset = (t + SLOTS) * 1000 - now; break end\n"
    "  end\n"
    "  return limit, rem, reset\n"
    "end\n"
    "local base = KEYS[1]\n"
    "local now = clock(ARGV[1])\n"
    "local tokens, lease, lease_ms = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])\n"
    "local lr, lt, lc = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])\n"
    "local ld, lm = tonumber(ARGV[8]), tonumber(ARGV[9])\n"
    "local rk, tk, ck = base .. 'rpm', base .. 'tpm', base .. 'conc'\n"
    "local now_s = floor(now / 1000)\n"
    "local day, month, day_end, month_end = period(now)\n"
    "local dk, mk = base .. 'd:' .. int(day), base .. 'm:' .. int(month)\n"
    "local rw, rn = window(rk)\n"
    "local tw, tn = window(tk)\n"
    "local re, te = second(rn, now_s), second(tn, now_s)\n"
    "local ru, tu = sum(rw, re), sum(tw, te)\n"
    "redis.call('ZREMRANGEBYSCORE', ck, '-inf', int(now))\n"
    "local conc = redis.call('ZCARD', ck)\n"
    "local du = tonumber(redis.call('HGET', dk, BUDGET) or '0')\n"
    "local mu = tonumber(redis.call('HGET', mk, BUDGET) or '0')\n"
    /* limit.c's dsv4_limit_hit: first reason, longest wait, -1 wins;
     * reasons by number: 1 rpm, 2 tpm, 3 concurrency, 4 daily, 5 monthly */
    "local reason, never, longest = 0, false, 0\n"
    "local function hit(r, nv, w)\n"
    "  if nv then\n"
    "    if not never then reason, never = r, true end\n"
    "    return\n"
    "  end\n"
    "  if reason == 0 then reason = r end\n"
    "  if w > longest then longest = w end\n"
    "end\n"
    "local function over(limit, used, cost) return limit > 0 and used + cost > limit end\n"
    "if over(lc, conc, 1) then\n"
    "  hit(3, false, "
    DSV4_LIMIT_STR(DSV4_LIMIT_CONC_RETRY_MS) ")\n"
    "end\n"
    "if over(lr, ru, 1) then\n"
    "  hit(1, false, wait(rw, re, now, ru, 1, lr))\n"
    "end\n"
    "if over(lt, tu, tokens) then\n"
    "  if tokens > lt then hit(2, true, 0)\n"
    "  else hit(2, false, wait(tw, te, now, tu, tokens, lt))\n"
    "  end\n"
    "end\n"
    "if over(ld, du, tokens) then\n"
    "  hit(4, tokens > ld, day_end - now)\n"
    "end\n"
    "if over(lm, mu, tokens) then\n"
    "  hit(5, tokens > lm, month_end - now)\n"
    "end\n"
    "local allowed, retry, res = 0, longest, {0, 0, 0, 0}\n"
    "if never then retry = -1 end\n"
    "if reason == 0 then\n"
    "  allowed, retry = 1, 0\n"
    "  charge(rk, rw, re, 1)\n"
    "  charge(tk, tw, te, tokens)\n"
    "  ru, tu = ru + 1, tu + tokens\n"
    "  redis.call('ZADD', ck, int(now + lease_ms), lease)\n"
    "  if redis.call('PTTL', ck) < lease_ms then redis.call('PEXPIRE', ck, int(lease_ms)) end\n"
    "  if redis.call('HINCRBY', dk, BUDGET, int(tokens)) == tokens then\n"
    "    redis.call('EXPIRE', dk, TTL_DAY)\n"
    "  end\n"
    "  if redis.call('HINCRBY', mk, BUDGET, int(tokens)) == tokens then\n"
    "    redis.call('EXPIRE', mk, TTL_MONTH)\n"
    "  end\n"
    "  local t = now\n"
    "  if te ~= now_s then t = te * 1000 end\n"
    "  res = {t, tokens, day, month}\n"
    "end\n"
    "local l1, r1, s1 = report(rw, re, now, lr, ru)\n"
    "local l2, r2, s2 = report(tw, te, now, lt, tu)\n"
    "return {allowed, reason, l1, r1, s1, l2, r2, s2, retry,\n"
    "        res[1], res[2], res[3], res[4]}\n";

const char dsv4_limit_lua_finish[] =
    DSV4_LUA_COMMON
    "local function correct(key, delta, ttl)\n"
    "  if delta == 0 then return end\n"
    "  local b = redis.call('HINCRBY', key, BUDGET, int(delta))\n"
    "  if b < 0 then redis.call('HSET', key, BUDGET, '0') end\n"
    "  if b == delta then redis.call('EXPIRE', key, ttl) end\n"
    "end\n"
    "local base, prefix, tenant = KEYS[1], ARGV[1], ARGV[2]\n"
    "local now = clock(ARGV[3])\n"
    "local day, month = period(now)\n"
    "local mday, mmonth = day, month\n"
    "if ARGV[4] == '1' then\n"
    "  local rtime, rtokens = tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "  local rday, rmonth = tonumber(ARGV[7]), tonumber(ARGV[8])\n"
    "  local delta = tonumber(ARGV[9]) - rtokens\n"
    "  local tk = base .. 'tpm'\n"
    "  local w, newest = window(tk)\n"
    "  if newest ~= nil then\n"
    "    local e, t = second(newest, floor(now / 1000)), floor(rtime / 1000)\n"
    "    if t > newest - SLOTS and t <= newest and t > e - SLOTS and t <= e then\n"
    "      redis.call('HSET', tk, int(t), int(math.max(0, (w[t] or 0) + delta)))\n"
    "    end\n"
    "  end\n"
    "  if rday == day then correct(base .. 'd:' .. int(rday), delta, TTL_DAY) end\n"
    "  if rmonth == month then correct(base .. 'm:' .. int(rmonth), delta, TTL_MONTH) end\n"
    "  redis.call('ZREM', base .. 'conc', ARGV[10])\n"
    "  mday, mmonth = rday, rmonth\n"
    "end\n"
    /* zero fields are not written (reads take a missing field as 0); a
     * period's first metering of the tenant sets TTLs and the tenants set */
    "local function meter(key, set, ttl)\n"
    "  local first = redis.call('HSETNX', key, 'metered', '1') == 1\n"
    "  for i = 1, #FIELDS do\n"
    "    if ARGV[10 + i] ~= '0' then\n"
    "      redis.call('HINCRBY', key, FIELDS[i], ARGV[10 + i])\n"
    "    end\n"
    "  end\n"
    "  if first then\n"
    "    redis.call('EXPIRE', key, ttl)\n"
    "    if redis.call('SADD', set, tenant) == 1 then\n"
    "      redis.call('EXPIRE', set, ttl)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "meter(base .. 'd:' .. int(mday), prefix .. 'tenants:d:' .. int(mday), TTL_DAY)\n"
    "meter(base .. 'm:' .. int(mmonth), prefix .. 'tenants:m:' .. int(mmonth), TTL_MONTH)\n"
    "return redis.status_reply('OK')\n";

const char dsv4_limit_lua_usage[] =
    DSV4_LUA_COMMON
    "local prefix = ARGV[1]\n"
    "local now = clock(ARGV[2])\n"
    "local day, month = period(now)\n"
    "local out = {day, month}\n"
    "local function entry(base, t)\n"
    "  local e = {t}\n"
    "  for _, k in ipairs({base .. 'd:' .. int(day), base .. 'm:' .. int(month)}) do\n"
    "    local v = redis.call('HMGET', k, unpack(FIELDS))\n"
    "    for i = 1, #FIELDS do e[#e + 1] = tonumber(v[i] or '0') end\n"
    "  end\n"
    "  out[#out + 1] = e\n"
    "end\n"
    "if #KEYS == 1 then\n"
    "  entry(KEYS[1], ARGV[3])\n"
    "else\n"
    "  local seen, all = {}, {}\n"
    "  for _, k in ipairs({prefix .. 'tenants:d:' .. int(day),\n"
    "                      prefix .. 'tenants:m:' .. int(month)}) do\n"
    "    for _, t in ipairs(redis.call('SMEMBERS', k)) do\n"
    "      if not seen[t] then seen[t] = true; all[#all + 1] = t end\n"
    "    end\n"
    "  end\n"
    "  table.sort(all)\n"
    "  for _, t in ipairs(all) do entry(prefix .. '{' .. t .. '}:', t) end\n"
    "end\n"
    "return out\n";
