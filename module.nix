# NixOS module for the nixfleet control plane: `services.nixfleet-control-plane`.
#
# It runs the server as the unprivileged system user `nixfleet-cp` under a hardened systemd unit, keeps its SQLite
# database in /var/lib/nixfleet-cp (StateDirectory), hands TLS material and the bootstrap token over as systemd
# credentials, and optionally opens the firewall and persists the state directory on impermanent hosts.
#
# The module only passes flags: it never sets NIXFLEET_CP_* variables, so `systemctl cat` shows the whole
# configuration on one line. With `prometheusRules` it also hands the alerting rules of
# contrib/prometheus/nixfleet.rules.yml to the host's Prometheus.
#
# module_test.go evaluates it with nixpkgs' lib.evalModules and stand-ins for the NixOS options it uses, without
# NixOS (see testdata/nix/eval.nix).
{ config, lib, pkgs, options, ... }:

let
  inherit (lib) mkOption types;

  cfg = config.services.nixfleet-control-plane;

  # The alerting rules for Prometheus, from the same source tree as the module (and the package).
  rulesFile = ./contrib/prometheus/nixfleet.rules.yml;

  # Whether this evaluation has the NixOS Prometheus module. Like `options ? environment.persistence` below, it
  # reads only `options`, so it may decide which attributes the module defines.
  hasPrometheus = options ? services.prometheus.ruleFiles;
  # Whether this host runs Prometheus; read only for the warning of prometheusRules.
  localPrometheus = hasPrometheus && (config.services.prometheus.enable or false);

  # Fixed by StateDirectory=nixfleet-cp; also the directory that impermanence persists.
  stateDir = "/var/lib/nixfleet-cp";
  user = "nixfleet-cp";
  group = "nixfleet-cp";

  # The listen port is the integer after the last `:` (`0.0.0.0:8080` -> 8080, `[::]:8443` -> 8443). `.*` is
  # greedy and the digits must run to the end of the string, so the match is always the last colon. It is null
  # when `listen` has no port: the assertion below then reports the error, instead of a parse failure somewhere
  # in the firewall or capability code. Leading zeros are dropped as Go's net.Listen does (`:0443` is 443);
  # builtins.fromJSON reads the decimal digits because lib.toInt refuses leading zeros.
  portDigits = builtins.match ".*:([0-9]+)" cfg.listen;
  port =
    if portDigits == null then null
    else builtins.fromJSON (builtins.head (builtins.match "0*([1-9][0-9]*|0)" (builtins.head portDigits)));

  # Binding below 1024 needs CAP_NET_BIND_SERVICE. Port 0 asks the kernel for a free ephemeral port, which never
  # needs the capability, so it does not count as privileged.
  privilegedPort = port != null && port > 0 && port < 1024;

  # SQLite writes `<db>-wal` and `<db>-shm` beside the database, so the whole directory must be writable, not just
  # the file. ProtectSystem=strict makes everything else read-only.
  dbDir = dirOf cfg.dbPath;
  dbDirIsExtra = dbDir != stateDir;

  # Secrets are passed as systemd credentials (LoadCredential=) rather than as plain paths: systemd (PID 1, root)
  # reads each file and exposes a private copy under $CREDENTIALS_DIRECTORY, readable only by this unit. So
  # root-only files under /run/secrets (sops-nix, agenix) stay root-only, the service user needs no extra group,
  # and the flags name `%d/<id>` (systemd expands %d to the credentials directory).
  credentials = lib.filter (c: c.path != null) [
    { id = "tls-cert"; flag = "--tls-cert"; path = cfg.tls.cert; }
    { id = "tls-key"; flag = "--tls-key"; path = cfg.tls.key; }
    { id = "client-ca"; flag = "--client-ca"; path = cfg.tls.clientCa; }
    { id = "bootstrap-token"; flag = "--bootstrap-token-file"; path = cfg.bootstrapTokenFile; }
  ];

  # The server arguments, in the order of SPEC §13.2: the fixed flags, then one flag per configured credential,
  # then extraArgs (last, so that the Go flag parser lets them override anything above).
  args =
    [
      "--listen" cfg.listen
      "--db-path" cfg.dbPath
      "--executor-interval" cfg.executorInterval
      "--report-retention" cfg.reportRetention
      "--log-level" cfg.logLevel
      "--stale-after" cfg.staleAfter
      "--drift-grace" cfg.driftGrace
    ]
    # Passed only when they differ from the daemon's defaults, so existing command lines stay as they were.
    ++ lib.optionals (!cfg.statusPage) [ "--ui" "false" ]
    ++ lib.optionals (cfg.maxEventStreams != null) [ "--max-event-streams" (toString cfg.maxEventStreams) ]
    ++ lib.concatMap (c: [ c.flag "%d/${c.id}" ]) credentials
    ++ cfg.extraArgs;
in
{
  options.services.nixfleet-control-plane = {
    enable = lib.mkEnableOption "NixFleet control plane server";

    package = mkOption {
      type = types.package;
      default = pkgs.nixfleet-control-plane;
      defaultText = lib.literalExpression "pkgs.nixfleet-control-plane";
      description = ''
        The package that provides `bin/nixfleet-control-plane`. The flake's `nixosModules.default` sets it to the
        flake's own build; without the flake, add `nixfleet-control-plane` to `pkgs` (for example with the flake's
        `overlays.default`).
      '';
    };

    listen = mkOption {
      type = types.str;
      default = "0.0.0.0:8080";
      example = "[::]:8443";
      description = ''
        TCP address to listen on, as `HOST:PORT` (`--listen`); IPv6 hosts in brackets, e.g. `[::]:8443`. A port
        below 1024 grants the service `CAP_NET_BIND_SERVICE`.
      '';
    };

    dbPath = mkOption {
      type = types.str;
      default = "${stateDir}/state.db";
      description = ''
        Path of the SQLite database (`--db-path`). A directory other than ${stateDir} is created (mode 0700, owned
        by the service user) and made writable for the service.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open the TCP port of `listen` in the firewall.";
    };

    tls = {
      cert = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/cp-cert.pem";
        description = ''
          PEM server certificate chain (`--tls-cert`). Setting it (with `tls.key`) serves HTTPS. The file is read
          by systemd with `LoadCredential`, so it may be readable by root only.
        '';
      };

      key = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/cp-key.pem";
        description = ''
          PEM private key for `tls.cert` (`--tls-key`). Read by systemd with `LoadCredential`, so it may be
          readable by root only.
        '';
      };

      clientCa = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/fleet-ca.pem";
        description = ''
          PEM CA bundle (`--client-ca`). Setting it requires client certificates from all clients (mTLS) and
          authenticates agents by their certificate's CN. Requires `tls.cert` and `tls.key`.
        '';
      };
    };

    executorInterval = mkOption {
      type = types.str;
      default = "2s";
      description = "How often the rollout executor runs (`--executor-interval`), a Go duration from 100ms to 1m.";
    };

    reportRetention = mkOption {
      type = types.str;
      default = "168h";
      description = ''
        How long agent reports are kept (`--report-retention`), a Go duration of at least 1h. The newest 100
        reports of each machine are always kept.
      '';
    };

    staleAfter = mkOption {
      type = types.str;
      default = "4m";
      example = "15m";
      description = ''
        A machine whose last report is older than this is stale (`--stale-after`), a Go duration from 1m to 24h.
        The default is three of the agents' default 60 s polls plus a minute of slack; raise it if your agents
        poll less often. Pending and decommissioned machines are never stale.
      '';
    };

    driftGrace = mkOption {
      type = types.str;
      default = "10m";
      example = "1h";
      description = ''
        A machine that reports another generation than its desired one, outside an unfinished batch of a running
        rollout, for longer than this is drifted (`--drift-grace`), a Go duration from 1m to 168h.
      '';
    };

    logLevel = mkOption {
      type = types.enum [ "debug" "info" "warn" "error" ];
      default = "info";
      description = "Minimum level of the log lines written to the journal (`--log-level`).";
    };

    bootstrapTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/cp-bootstrap-token";
      description = ''
        File holding a one-time secret of at least 16 bytes (`--bootstrap-token-file`). When set,
        `POST /api/v1/keys/bootstrap` also requires the header `X-Bootstrap-Token`. Read by systemd with
        `LoadCredential`, so it may be readable by root only.
      '';
    };

    statusPage = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to serve the read-only status page at `/ui/` (`--ui`). The page is static and embedded in the
        binary; it asks for an API key and reads the JSON API and the event stream with it. When false, `/ui/`
        answers 404.
      '';
    };

    maxEventStreams = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 500;
      description = ''
        The most event streams (`GET /api/v1/events`, also used by the status page) open at once
        (`--max-event-streams`); one more is refused with 503. Null keeps the daemon's default, 100.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--log-level=debug" ];
      description = ''
        Extra arguments appended to the command line. They come last, so a flag given here overrides the one the
        module sets. A fleet of more than about 9,000 agents should raise `--max-connections` (default 10000; beyond
        it, idle connections are closed to admit new ones, costing a handshake per request) to its size plus room for
        operators, for example `"--max-connections=31000"` for 30,000 agents: every agent keeps
        a connection open between polls (the idle timeout, 120 s, outlasts the 60 s poll), at about 45 KiB of
        memory each in mTLS mode and 20 KiB in plain mode (README, "Connections and memory").
      '';
    };

    persist = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to persist ${stateDir} on impermanent hosts. Takes effect only when the impermanence module
        (option `environment.persistence`) is loaded.
      '';
    };

    persistPath = mkOption {
      type = types.str;
      default = "/persist";
      description = "The impermanence persistence root under which ${stateDir} is kept.";
    };

    prometheusRules = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to add the control plane's Prometheus alerting rules (`contrib/prometheus/nixfleet.rules.yml`:
        stale and drifted machines, paused and failed rollouts, authentication failure bursts, a locked database,
        executor errors, the control plane down) to the Prometheus server of this host, through
        `services.prometheus.ruleFiles`. It neither enables Prometheus nor adds a scrape job: the rules expect the
        control plane to be scraped by a job named `nixfleet-control-plane`. On a Prometheus host that does not
        run the control plane, add the file from this flake's source to `services.prometheus.ruleFiles`
        instead.
      '';
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions = [
        {
          assertion = builtins.match ".*:[0-9]+" cfg.listen != null;
          message = "listen must be in HOST:PORT format";
        }
        {
          assertion = (cfg.tls.cert == null) == (cfg.tls.key == null);
          message = "tls.cert and tls.key must be set together";
        }
        {
          assertion = cfg.tls.clientCa == null || (cfg.tls.cert != null && cfg.tls.key != null);
          message = "tls.clientCa requires tls.cert and tls.key";
        }
      ];

      # The rules only take effect in a Prometheus that runs on this host.
      warnings = lib.optional (cfg.prometheusRules && !localPrometheus) (
        "services.nixfleet-control-plane.prometheusRules is set, but this host runs no Prometheus"
        + " (services.prometheus.enable is not true), so the alerting rules are not evaluated here."
      );

      # A static system user rather than DynamicUser: the database must keep one owner across restarts, and
      # DynamicUser's /var/lib/private indirection does not mix with impermanence bind mounts.
      users.users.${user} = {
        isSystemUser = true;
        inherit group;
        description = "NixFleet control plane";
      };
      users.groups.${group} = { };

      # Created before the service starts: ReadWritePaths= fails the unit when its path does not exist.
      systemd.tmpfiles.rules = lib.optional dbDirIsExtra "d ${dbDir} 0700 ${user} ${group} -";

      networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && port != null) port;

      systemd.services.nixfleet-control-plane = {
        description = "NixFleet Control Plane Server";
        wantedBy = [ "multi-user.target" ];
        # network-online: the server binds a configured address, which may not exist before the network is up.
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];

        serviceConfig = {
          # escapeShellArgs single-quotes any argument that needs it, and systemd splits ExecStart= on the same
          # quotes. systemd also expands `%` specifiers (wanted here for `%d`), `$VAR` and backslash escapes, so
          # option values should not contain `%`, `$` or `\`.
          ExecStart = "${cfg.package}/bin/nixfleet-control-plane ${lib.escapeShellArgs args}";
          Type = "simple";
          Restart = "always";
          RestartSec = 10;
          User = user;
          Group = group;

          # /var/lib/nixfleet-cp, created and chowned by systemd and private to the service user.
          StateDirectory = "nixfleet-cp";
          StateDirectoryMode = "0700";
          # Whatever mode the daemon asks for, the database, its WAL files and any directory it creates stay
          # private to the service user.
          UMask = "0077";

          # On SIGTERM the server drains in-flight requests for up to 15 s, then flushes the report queue and
          # checkpoints the database. 30 s leaves room for that before systemd escalates to SIGKILL, which would
          # skip the clean close.
          KillSignal = "SIGTERM";
          TimeoutStopSec = 30;

          # Sandboxing. The server needs only its state directory, its credentials and TCP/Unix sockets.
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          # Safe for a pure Go binary (CGO_ENABLED=0, SQLite through modernc.org/sqlite): nothing maps memory
          # that is both writable and executable.
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" ];
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          # StateDirectory= alone would make /var/lib/nixfleet-cp writable; it is listed anyway so that the
          # writable set is spelled out in one place, with the database directory when it lives elsewhere.
          ReadWritePaths = [ stateDir ] ++ lib.optional dbDirIsExtra dbDir;
          # No capabilities at all (the empty string clears the bounding set), except the one needed to bind a
          # port below 1024 as a non-root user.
          CapabilityBoundingSet = if privilegedPort then "CAP_NET_BIND_SERVICE" else "";
          # Each agent keeps a connection open between polls, and admin clients hold some too; the default soft
          # limit of 1024 would cap a large fleet. 65536 leaves room for about 64,000 agents (with
          # --max-connections raised); a larger fleet raises both.
          LimitNOFILE = 65536;
        }
        // lib.optionalAttrs (credentials != [ ]) {
          LoadCredential = map (c: "${c.id}:${c.path}") credentials;
        }
        // lib.optionalAttrs privilegedPort {
          AmbientCapabilities = "CAP_NET_BIND_SERVICE";
        };
      };
    }

    # Impermanence. `options ? environment.persistence` is true only when the impermanence module is imported; the
    # attribute is built with optionalAttrs so that, without it, the option is never mentioned (a definition of a
    # missing option is an error even behind mkIf false). The condition reads only `options`, never `config`:
    # a condition on cfg here would decide which top-level attributes this module defines and make the module
    # system recurse infinitely, so `persist` is applied one level down, with mkIf.
    (lib.optionalAttrs (options ? environment.persistence) {
      environment.persistence = lib.mkIf cfg.persist {
        ${cfg.persistPath}.directories = [
          {
            directory = stateDir;
            inherit user group;
            mode = "0700";
          }
        ];
      };
    })

    # Prometheus alerting rules, guarded like impermanence: without the Prometheus module, services.prometheus is
    # never mentioned; with it, the rules file is added only when prometheusRules is set. Prometheus itself is
    # left alone (enable, scrape jobs and the other rule files are the host's business).
    (lib.optionalAttrs hasPrometheus {
      services.prometheus.ruleFiles = lib.mkIf cfg.prometheusRules [ rulesFile ];
    })
  ]);
}
