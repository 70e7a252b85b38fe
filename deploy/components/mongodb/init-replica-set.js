// Initiates the MongoDB replica set once and, when an application user is
// configured, creates it (or updates its password and roles). Idempotent:
// running it again against a formed set changes nothing.
//
//   mongosh --nodb --quiet --norc --file init-replica-set.js
//
// Environment:
//   MONGO_REPLICAS      members expected: <service>-0 .. <service>-(N-1) (default 3)
//   MONGO_REPLICA_SET   replica-set name (default rs0)
//   MONGO_SERVICE       StatefulSet and headless Service name (default mongo)
//   POD_NAMESPACE       namespace of the members
//   MONGO_HOSTS         host:port of every member, comma-separated, instead
//                       of the names above (optional)
//   MONGO_ROOT_USERNAME / MONGO_ROOT_PASSWORD
//                       admin credentials (only with authentication on)
//   MICROSHOP_MONGODB_USERNAME / MICROSHOP_MONGODB_PASSWORD
//                       the application user to create (optional)
//   Each of these four may instead be given as <NAME>_FILE, the path of a
//   file holding it (a mounted Secret; trailing whitespace is ignored).
//   MICROSHOP_MONGODB_DATABASES
//                       databases it may read and write (comma-separated;
//                       default: the four per-service databases)

const replicas = parseInt(process.env.MONGO_REPLICAS || "3", 10);
const setName = process.env.MONGO_REPLICA_SET || "rs0";
const service = process.env.MONGO_SERVICE || "mongo";
const namespace = process.env.POD_NAMESPACE || "default";
// A secret setting from NAME or from the file NAME_FILE names (both set is
// an error); never printed.
function secret(name) {
  const file = process.env[`${name}_FILE`] || "";
  const value = process.env[name] || "";
  if (file && value) {
    throw new Error(`both ${name} and ${name}_FILE are set: set only one`);
  }
  if (!file) {
    return value;
  }
  try {
    return require("fs").readFileSync(file, "utf8").replace(/\s+$/, "");
  } catch (e) {
    throw new Error(`cannot read ${name}_FILE ${file}: ${e.code || e.message}`);
  }
}

const rootUser = secret("MONGO_ROOT_USERNAME");
const rootPassword = secret("MONGO_ROOT_PASSWORD");
const appUser = secret("MICROSHOP_MONGODB_USERNAME");
const appPassword = secret("MICROSHOP_MONGODB_PASSWORD");
const databases = (
  process.env.MICROSHOP_MONGODB_DATABASES ||
  "microshop_inventory,microshop_loyalty,microshop_order,microshop_orchestrator"
)
  .split(",")
  .map((name) => name.trim())
  .filter((name) => name.length > 0);

const NOT_YET_INITIALIZED = 94;
const ALREADY_INITIALIZED = 23;

if (!(replicas >= 1)) {
  throw new Error(`MONGO_REPLICAS must be a positive number, got ${process.env.MONGO_REPLICAS}`);
}
const hosts = (process.env.MONGO_HOSTS || "")
  .split(",")
  .map((host) => host.trim())
  .filter((host) => host.length > 0);
if (hosts.length === 0) {
  for (let i = 0; i < replicas; i++) {
    hosts.push(`${service}-${i}.${service}.${namespace}.svc:27017`);
  }
}

// The admin database of one member, over a direct connection, authenticated
// when credentials are configured.
function admin(host) {
  const conn = new Mongo(`mongodb://${host}/?directConnection=true&serverSelectionTimeoutMS=5000`);
  const db = conn.getDB("admin");
  if (rootUser) {
    db.auth(rootUser, rootPassword);
  }
  return db;
}

// A command's reply; a server error becomes {ok: 0, code, errmsg}. (The
// reply is bound before it is returned: mongosh's async rewriting does not
// catch a rejected `return db.runCommand(...)` in this try.)
function command(db, cmd) {
  try {
    const reply = db.runCommand(cmd);
    return reply;
  } catch (e) {
    return { ok: 0, code: e.code, codeName: e.codeName, errmsg: String(e.message || e) };
  }
}

// Retries `probe` every 2 s until it returns a truthy value, saying every
// 30 s what it is still waiting for (so the Job's log tells why it hangs).
function waitFor(what, probe, timeoutMs) {
  const start = Date.now();
  const deadline = start + (timeoutMs || 15 * 60 * 1000);
  let last = "no answer yet";
  let nextReport = start + 30 * 1000;
  for (;;) {
    try {
      const value = probe();
      if (value) {
        return value;
      }
    } catch (e) {
      last = String(e.message || e);
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}: ${last}`);
    }
    if (Date.now() > nextReport) {
      print(`still waiting for ${what} after ${Math.round((Date.now() - start) / 1000)} s: ${last}`);
      nextReport = Date.now() + 30 * 1000;
    }
    sleep(2000);
  }
}

for (const host of hosts) {
  waitFor(`${host} to answer`, () => command(admin(host), { ping: 1 }).ok === 1);
  print(`${host} answers`);
}

const first = admin(hosts[0]);
const status = command(first, { replSetGetStatus: 1 });
if (status.ok === 1) {
  print(`replica set ${status.set} is already initiated with ${status.members.length} member(s)`);
  if (status.members.length !== replicas) {
    print(
      `WARNING: ${replicas} member(s) expected; change membership on the primary ` +
        `with rs.add() / rs.remove() (one voting member at a time)`,
    );
  }
} else if (status.code === NOT_YET_INITIALIZED) {
  const config = { _id: setName, members: hosts.map((host, i) => ({ _id: i, host: host })) };
  const reply = command(first, { replSetInitiate: config });
  if (reply.ok !== 1 && reply.code !== ALREADY_INITIALIZED) {
    throw new Error(`replSetInitiate failed: ${JSON.stringify(reply)}`);
  }
  print(`initiated replica set ${setName}: ${hosts.join(", ")}`);
} else {
  throw new Error(`replSetGetStatus on ${hosts[0]} failed: ${JSON.stringify(status)}`);
}

const primary = waitFor("a primary", () => {
  for (const host of hosts) {
    try {
      if (command(admin(host), { hello: 1 }).isWritablePrimary === true) {
        return host;
      }
    } catch (e) {
      // that member is not reachable yet; try the next one
    }
  }
  return null;
});
print(`primary: ${primary}`);

if (appUser) {
  if (!appPassword) {
    throw new Error("the application user is set but its password (MICROSHOP_MONGODB_PASSWORD or _FILE) is empty");
  }
  const db = admin(primary);
  const roles = databases.map((name) => ({ role: "readWrite", db: name }));
  const existing = command(db, { usersInfo: appUser });
  if (existing.ok !== 1) {
    throw new Error(`usersInfo failed: ${JSON.stringify(existing)}`);
  }
  const verb = existing.users.length === 0 ? "createUser" : "updateUser";
  const cmd = {};
  cmd[verb] = appUser;
  cmd.pwd = appPassword;
  cmd.roles = roles;
  cmd.writeConcern = { w: "majority" };
  const reply = command(db, cmd);
  if (reply.ok !== 1) {
    throw new Error(`${verb} ${appUser} failed: ${JSON.stringify(reply)}`);
  }
  print(`${verb} ${appUser}: readWrite on ${databases.join(", ")}`);
}

print("MongoDB replica set ready");
