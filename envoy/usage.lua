-- Token usage capture for billing and token limits (Envoy HTTP Lua filter).
--
-- Request side: mark streams (metadata "crosslogic.usage" streamed) and, when ext_authz
-- decided that a streaming request must report usage (metadata
-- envoy.filters.http.ext_authz/force_include_usage), rewrite the JSON body so that
-- stream_options.include_usage is true: a stream can then never dodge billing.
--
-- Response side: scan the body chunk by chunk (never buffering it: embeddings can exceed the
-- connection buffer, streams can last minutes) for the last complete "usage" object and store
-- its counts in dynamic metadata "crosslogic.usage" (prompt_tokens, completion_tokens), where
-- the access log reads them. It also keeps a running count of generation events
-- (completion_seen): when a client abandons a stream before the usage chunk, that is what
-- settles its token reservation. Envoy's LuaJIT has no JSON library, hence the patterns below.

local NS = "crosslogic.usage"
local WINDOW = 2048  -- bytes kept across chunk boundaries; a usage object is far smaller
local CARRY = 40  -- longer than any marker we count
local UNFINISHED = '"finish_reason"%s*:%s*null'
local ROLE = '"role"%s*:'

local function count(text, pattern)
  local _, n = string.gsub(text, pattern, "")
  return n
end

local function force_include_usage(handle)
  local authz = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.ext_authz")
  if authz == nil or not authz["force_include_usage"] then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  -- Add the option as the object's LAST key: JSON parsers keep the last of duplicate keys,
  -- so whatever the client wrote earlier (false, null, escapes, decoys) cannot win.
  local head = string.match(text, "^(.*)}%s*$")
  if head == nil then
    return  -- not an object; ext_authz already refused such bodies
  end
  local out = head .. ',"stream_options":{"include_usage":true}}'
  body:setBytes(out)
  handle:headers():replace("content-length", tostring(string.len(out)))
end

-- The counts of the last complete usage object in text, or nil.
local function last_usage(text)
  local start = nil
  local init = 1
  while true do
    local _, e = string.find(text, '"usage"%s*:%s*{', init)
    if e == nil then
      break
    end
    start = e
    init = e + 1
  end
  if start == nil then
    return nil
  end
  -- find the matching closing brace (usage nests *_tokens_details objects)
  local depth = 0
  local stop = nil
  for i = start, math.min(string.len(text), start + 1024) do
    local c = string.sub(text, i, i)
    if c == "{" then
      depth = depth + 1
    elseif c == "}" then
      depth = depth - 1
      if depth == 0 then
        stop = i
        break
      end
    end
  end
  if stop == nil then
    return nil  -- incomplete: the rest arrives with the next chunk
  end
  local object = string.sub(text, start, stop)
  local prompt = string.match(object, '"prompt_tokens"%s*:%s*(%d+)')
  if prompt == nil then
    return nil
  end
  local completion = string.match(object, '"completion_tokens"%s*:%s*(%d+)') or "0"
  return tonumber(prompt), tonumber(completion)
end

function envoy_on_request(request_handle)
  -- ext_authz sends streams and embeddings here (x-crosslogic-usage: scan): anything but
  -- embeddings is a stream. Said now, not at the response's headers, so that a stream whose
  -- client leaves before any answer is still billed as one (prompt estimate, nothing sent).
  local path = request_handle:headers():get(":path") or ""
  if not string.find(path, "/v1/embeddings", 1, true) then
    request_handle:streamInfo():dynamicMetadata():set(NS, "streamed", true)
  end
  force_include_usage(request_handle)
end

function envoy_on_response(response_handle)
  local content_type = response_handle:headers():get("content-type") or ""
  if string.find(content_type, "text/event-stream", 1, true) then
    response_handle:streamInfo():dynamicMetadata():set(NS, "streamed", true)
  end
  local window = ""
  local carry = ""  -- the end of the previous chunk: a marker may straddle two chunks
  local events, roles = 0, 0  -- what a client that leaves early was sent
  for chunk in response_handle:bodyChunks() do
    local bytes = chunk:getBytes(0, chunk:length())
    window = window .. bytes
    -- fetched again after every yield: the handle from before the yield is stale
    local md = response_handle:streamInfo():dynamicMetadata()
    local joined = carry .. bytes
    local open = count(joined, UNFINISHED) - count(carry, UNFINISHED)
    local role = count(joined, ROLE) - count(carry, ROLE)
    carry = string.sub(bytes, -CARRY)
    if open > 0 then
      events, roles = events + open, roles + role
      -- each unfinished event carries a token, except chat's opening one per choice (role)
      md:set(NS, "completion_seen", math.max(events - roles, 0))
    end
    local prompt, completion = last_usage(window)
    if prompt ~= nil then
      md:set(NS, "prompt_tokens", prompt)
      md:set(NS, "completion_tokens", completion)
    end
    if string.len(window) > WINDOW then
      window = string.sub(window, -WINDOW)
    end
  end
end
