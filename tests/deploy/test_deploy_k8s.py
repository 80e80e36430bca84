"""Kubernetes manifests (deploy/k8s): every file parses; the probes, the
scrape path and the autoscaler's metric point at endpoints and series the
real dcnserve binary serves; the drain fits in the grace period; CPU
requests = limits with the worker count following the CPU limit; the pod
runs as the image's non-root user on a read-only root filesystem with the
model from a read-only volume; every DCNSERVE_* variable is a real option."""
import os
import re
import unittest

from deploy_support import (DeployTestCase, ROOT, Server, load_yaml_docs, need_binary, read,
                            server_options)

K8S = "deploy/k8s"


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def cpu_cores(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def duration_ms(text):
    return int(text)


class K8sManifests(DeployTestCase):
    def setUp(self):
        super().setUp()
        self.docs = {}
        for fn in sorted(os.listdir(os.path.join(ROOT, K8S))):
            if fn.endswith((".yaml", ".yml")):
                self.docs[fn] = load_yaml_docs(os.path.join(K8S, fn))
        objs = [d for fn, ds in self.docs.items() if fn != "prometheus-scrape.yaml" for d in ds]
        self.deploy = by_kind(objs, "Deployment")[0]
        self.pod = self.deploy["spec"]["template"]["spec"]
        self.c = [c for c in self.pod["containers"] if c["name"] == "dcnserve"][0]
        self.env = {e["name"]: e for e in self.c.get("env", [])}
        self.objs = objs

    def test_every_file_parses_into_objects(self):
        self.assertIn("deployment.yaml", self.docs)
        for fn, ds in self.docs.items():
            self.assertTrue(ds, fn)
            if fn == "prometheus-scrape.yaml":
                continue
            for d in ds:
                self.assertIn("apiVersion", d, fn)
                self.assertIn("kind", d, fn)

    def test_kustomization_lists_existing_files(self):
        k = self.docs["kustomization.yaml"][0]
        for r in k["resources"]:
            self.assertTrue(os.path.isfile(os.path.join(ROOT, K8S, r)), r)

    def test_probes_use_the_kserve_health_paths_on_the_served_port(self):
        ports = {p["name"]: p["containerPort"] for p in self.c["ports"]}
        want = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                "livenessProbe": "/v2/health/live"}
        for probe, path in want.items():
            g = self.c[probe]["httpGet"]
            self.assertEqual(g["path"], path, probe)
            port = ports[g["port"]] if isinstance(g["port"], str) else g["port"]
            self.assertEqual(str(port), self.env["DCNSERVE_PORT"]["value"], probe)

    def test_env_names_are_real_options(self):
        need_binary(self)
        known = server_options()
        for name in self.env:
            if name.startswith("DCNSERVE_"):
                self.assertIn(name, known, name)

    def test_cpu_requests_equal_limits_and_workers_follow_the_limit(self):
        res = self.c["resources"]
        self.assertEqual(cpu_cores(res["requests"]["cpu"]), cpu_cores(res["limits"]["cpu"]))
        self.assertEqual(res["requests"]["memory"], res["limits"]["memory"])
        ref = self.env["DCNSERVE_WORKERS"]["valueFrom"]["resourceFieldRef"]
        self.assertEqual(ref["resource"], "limits.cpu")
        self.assertEqual(ref.get("containerName", "dcnserve"), "dcnserve")
        self.assertEqual(str(ref["divisor"]), "1")

    def test_drain_fits_in_the_grace_period(self):
        pre = self.c["lifecycle"]["preStop"]["exec"]["command"]
        self.assertTrue(pre[0].endswith("sleep"), pre)
        pre_s = float(pre[1])
        delay_ms = duration_ms(self.env["DCNSERVE_DRAIN_DELAY_MS"]["value"])
        timeout_ms = duration_ms(self.env["DCNSERVE_DRAIN_TIMEOUT_MS"]["value"])
        total = pre_s + (delay_ms + timeout_ms) / 1000
        self.assertLess(total + 5, self.pod["terminationGracePeriodSeconds"],
                        "preStop + drain delay + drain timeout (+5 s margin) must end before SIGKILL")

    def test_security_matches_the_image(self):
        uid = int(re.search(r"^USER\s+(\d+)", read("Dockerfile"), re.M).group(1))
        psc, csc = self.pod["securityContext"], self.c["securityContext"]
        self.assertTrue(psc["runAsNonRoot"])
        self.assertEqual(psc["runAsUser"], uid)
        self.assertTrue(csc["readOnlyRootFilesystem"])
        self.assertFalse(csc["allowPrivilegeEscalation"])
        self.assertEqual(csc["capabilities"]["drop"], ["ALL"])

    def test_model_comes_from_a_read_only_volume(self):
        mounts = {m["name"]: m for m in self.c["volumeMounts"]}
        vols = {v["name"]: v for v in self.pod["volumes"]}
        # a repository: the file's variable empties the image's default
        self.assertEqual(self.env["DCNSERVE_MODEL"]["value"], "")
        repo = self.env["DCNSERVE_MODEL_REPOSITORY"]["value"].rstrip("/") + "/"
        self.assertGreater(int(self.env["DCNSERVE_POLL_S"]["value"]), 0)
        m = [m for m in mounts.values() if repo.startswith(m["mountPath"].rstrip("/") + "/")]
        self.assertEqual(len(m), 1, "DCNSERVE_MODEL_REPOSITORY must lie on one mounted volume")
        self.assertTrue(m[0]["readOnly"])
        self.assertNotIn("subPath", m[0], "a subPath mount would hide a renamed model file")
        vol = vols[m[0]["name"]]
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            self.assertTrue(claim in [o["metadata"]["name"] for o in by_kind(self.objs, "PersistentVolumeClaim")])

    def test_service_and_pdb_select_the_pods(self):
        labels = self.deploy["spec"]["template"]["metadata"]["labels"]
        port_names = {p["name"] for p in self.c["ports"]}
        for kind in ("Service", "PodDisruptionBudget"):
            obj = by_kind(self.objs, kind)[0]
            sel = obj["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            self.assertTrue(sel.items() <= labels.items(), kind)
        svc = by_kind(self.objs, "Service")[0]
        for p in svc["spec"]["ports"]:
            self.assertIn(p["targetPort"], port_names)

    def test_hpa_scales_the_deployment_on_cpu_and_queue_time(self):
        hpa = by_kind(self.objs, "HorizontalPodAutoscaler")[0]
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], self.deploy["metadata"]["name"])
        kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
        self.assertEqual(kinds["Resource"]["resource"]["name"], "cpu")
        name = kinds["Pods"]["pods"]["metric"]["name"]
        adapter = [d for d in self.objs if d.get("kind") == "ConfigMap"
                   and "prometheus-adapter" in d["metadata"]["name"]][0]
        import yaml
        rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
        self.assertIn(name, [r["name"]["as"] for r in rules])
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)

    def test_scrape_job_keeps_the_annotated_pods(self):
        job = self.docs["prometheus-scrape.yaml"][0]["scrape_configs"][0]
        ann = self.deploy["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(ann["prometheus.io/scrape"], "true")
        self.assertEqual(ann["prometheus.io/port"], self.env["DCNSERVE_PORT"]["value"])
        keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        self.assertTrue(any("annotation_prometheus_io_scrape" in s for r in keeps for s in r["source_labels"]))
        targets = {r.get("target_label") for r in job["relabel_configs"]}
        self.assertTrue({"namespace", "pod"} <= targets, "the adapter maps these labels to resources")


class K8sAgainstTheBinary(DeployTestCase):
    """The paths and series the manifests name, asked of a running dcnserve."""

    def test_probe_scrape_and_metric_names_exist(self):
        need_binary(self)
        dep = by_kind(load_yaml_docs("deploy/k8s/deployment.yaml"), "Deployment")[0]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        paths = {c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        metrics_path = dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
        adapter = load_yaml_docs("deploy/k8s/prometheus-adapter.yaml")[0]
        import yaml
        rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
        series = set()
        for r in rules:
            series |= set(re.findall(r"\b(dcnserve_[a-z_]+)\{", r["seriesQuery"] + r["metricsQuery"]))
        self.assertTrue(series)
        with Server() as s:
            for p in sorted(paths):
                st, body = s.get(p)
                self.assertEqual(st, 200, "%s -> %d %s" % (p, st, body))
            st, text = s.get(metrics_path)
            self.assertEqual(st, 200)
            for name in series:
                self.assertRegex(text, r"(?m)^%s(\{| )" % re.escape(name), name)


if __name__ == "__main__":
    unittest.main()
