"""The Compose stack (deploy/compose): the file parses; several dcnserve
replicas built from the top-level Dockerfile, hardened like the pods; the
nginx balancer (Debian's package on bookworm-slim) proxies exactly those
replicas on the port they serve, waits for their HEALTHCHECK and keeps
/metrics off the balancer; Prometheus scrapes each replica; the stop grace
period covers the drain; every DCNSERVE_* variable is a real option."""
import os
import re
import unittest

from deploy_support import DeployTestCase, ROOT, load_yaml_docs, need_binary, read, server_options

COMPOSE = "deploy/compose/docker-compose.yml"


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(text))
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


class Compose(DeployTestCase):
    def setUp(self):
        super().setUp()
        self.doc = load_yaml_docs(COMPOSE)[0]
        self.svc = self.doc["services"]
        self.replicas = {n: s for n, s in self.svc.items() if n.startswith("dcnserve-")}

    def test_several_replicas_of_the_top_level_image(self):
        self.assertGreaterEqual(len(self.replicas), 2)
        for name, s in self.replicas.items():
            ctx = os.path.normpath(os.path.join(ROOT, "deploy/compose", s["build"]["context"]))
            self.assertEqual(ctx, ROOT, name)
            self.assertTrue(os.path.isfile(os.path.join(ctx, s["build"].get("dockerfile", "Dockerfile"))))
            self.assertTrue(s["read_only"], name)
            self.assertIn("ALL", s["cap_drop"], name)
        self.assertEqual(len({s["image"] for s in self.replicas.values()}), 1)

    def test_env_names_are_real_options_and_the_grace_period_covers_the_drain(self):
        need_binary(self)
        opts = server_options()
        for name, s in self.replicas.items():
            env = s.get("environment", {})
            for k in env:
                self.assertIn(k, opts, k)
            delay = int(env.get("DCNSERVE_DRAIN_DELAY_MS", opts["DCNSERVE_DRAIN_DELAY_MS"]))
            timeout = int(env.get("DCNSERVE_DRAIN_TIMEOUT_MS", opts["DCNSERVE_DRAIN_TIMEOUT_MS"]))
            self.assertGreater(seconds(s["stop_grace_period"]), (delay + timeout) / 1000, name)

    def test_balancer_proxies_exactly_the_replicas(self):
        lb = self.svc["lb"]
        build = os.path.join(ROOT, "deploy/compose", lb["build"])
        df = read(os.path.relpath(os.path.join(build, "Dockerfile"), ROOT))
        self.assertRegex(df, r"(?m)^FROM debian:bookworm-slim$")
        self.assertIn("install -y --no-install-recommends nginx", df)
        conf = read(os.path.relpath(os.path.join(build, "nginx.conf"), ROOT))
        servers = set(re.findall(r"(?m)^\s*server\s+([\w.-]+):(\d+)", conf))
        port = "8080"
        self.assertEqual(servers, {(n, port) for n in self.replicas})
        for n in self.replicas:
            self.assertEqual(lb["depends_on"][n]["condition"], "service_healthy")
        self.assertIn("location = /rank", conf)
        self.assertIn("/v2/health/", conf)
        self.assertNotRegex(conf, r"location[^{]*metrics", "metrics are scraped per replica, not balanced")
        self.assertIn("keepalive", conf)
        # the balancer's body limit matches the server's default body limit
        need_binary(self)
        mb = int(re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1))
        self.assertEqual(mb * 1024 * 1024, int(server_options()["DCNSERVE_MAX_BODY_BYTES"]))

    def test_prometheus_scrapes_each_replica(self):
        prom = self.svc["prometheus"]
        build = os.path.join("deploy/compose", prom["build"])
        self.assertRegex(read(os.path.join(build, "Dockerfile")), r"(?m)^FROM debian:bookworm-slim$")
        cfg = load_yaml_docs(os.path.join(build, "prometheus.yml"))[0]
        job = [j for j in cfg["scrape_configs"] if j["job_name"] == "dcnserve"][0]
        self.assertEqual(job.get("metrics_path", "/metrics"), "/metrics")
        targets = {t for sc in job["static_configs"] for t in sc["targets"]}
        self.assertEqual(targets, {n + ":8080" for n in self.replicas})

    def test_no_heredoc_runs(self):
        for d in ("deploy/compose/nginx", "deploy/compose/prometheus"):
            self.assertNotRegex(read(d + "/Dockerfile"), r"RUN[^\n]*<<")


if __name__ == "__main__":
    unittest.main()
