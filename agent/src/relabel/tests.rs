use super::*;

fn spec(action: &str) -> RuleSpec {
    RuleSpec {
        action: Some(action.into()),
        ..RuleSpec::default()
    }
}

fn sources(names: &[&str]) -> Option<Vec<String>> {
    Some(names.iter().map(|s| s.to_string()).collect())
}

fn run(rules: &[RuleSpec], input: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    let rules: Vec<Rule> = rules.iter().map(|r| Rule::new(r).unwrap()).collect();
    let mut labels = Labels::new();
    for (n, v) in input {
        labels.push(*n, *v);
    }
    let mut scratch = Scratch::default();
    process(&rules, &mut labels, &mut scratch).then(|| labels.sorted())
}

fn run1(rule: &RuleSpec, input: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    run(std::slice::from_ref(rule), input)
}

fn set(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    v.sort();
    Some(v)
}

#[test]
fn replace_defaults_copy_the_source() {
    let rule = RuleSpec {
        source_labels: sources(&["a"]),
        target_label: Some("b".into()),
        ..RuleSpec::default()
    };
    assert_eq!(run1(&rule, &[("a", "x")]), set(&[("a", "x"), ("b", "x")]));
    // An absent source is "", which `(.*)` matches: the target is removed.
    assert_eq!(run1(&rule, &[("b", "old")]), set(&[]));
}

#[test]
fn replace_with_groups_and_names_in_the_target() {
    // From the Prometheus docs: the address's host without its port.
    let host = RuleSpec {
        source_labels: sources(&["__address__"]),
        regex: Some("(.*):\\d+".into()),
        target_label: Some("host".into()),
        replacement: Some("${1}".into()),
        ..RuleSpec::default()
    };
    assert_eq!(
        run1(&host, &[("__address__", "10.0.0.1:9100")]),
        set(&[("__address__", "10.0.0.1:9100"), ("host", "10.0.0.1")])
    );
    // No match: nothing changes.
    assert_eq!(
        run1(&host, &[("__address__", "nohost")]),
        set(&[("__address__", "nohost")])
    );
    // A target made of groups; an invalid result leaves the set alone.
    let named = RuleSpec {
        source_labels: sources(&["k", "v"]),
        separator: Some("=".into()),
        regex: Some("(\\w*)=(.*)".into()),
        target_label: Some("tag_$1".into()),
        replacement: Some("$2".into()),
        ..RuleSpec::default()
    };
    assert_eq!(
        run1(&named, &[("k", "env"), ("v", "prod")]),
        set(&[("k", "env"), ("v", "prod"), ("tag_env", "prod")])
    );
    assert_eq!(
        run1(&named, &[("k", ""), ("v", "x")]),
        set(&[("v", "x"), ("tag_", "x")])
    );
}

#[test]
fn keep_drop_and_their_equal_forms() {
    let drop = RuleSpec {
        source_labels: sources(&["__name__"]),
        regex: Some("go_.*|process_.*".into()),
        ..spec("drop")
    };
    assert_eq!(run1(&drop, &[("__name__", "go_gc")]), None);
    assert!(run1(&drop, &[("__name__", "node_load1")]).is_some());
    let keep = RuleSpec {
        source_labels: sources(&["mode"]),
        regex: Some("idle|user".into()),
        ..spec("keep")
    };
    assert!(run1(&keep, &[("mode", "idle")]).is_some());
    assert_eq!(run1(&keep, &[("mode", "system")]), None);
    assert_eq!(run1(&keep, &[]), None);
    let keepequal = RuleSpec {
        source_labels: sources(&["a"]),
        target_label: Some("b".into()),
        ..spec("keepequal")
    };
    assert!(run1(&keepequal, &[("a", "1"), ("b", "1")]).is_some());
    assert_eq!(run1(&keepequal, &[("a", "1"), ("b", "2")]), None);
    assert!(run1(&keepequal, &[]).is_some());
    let dropequal = RuleSpec {
        source_labels: sources(&["a"]),
        target_label: Some("b".into()),
        ..spec("DropEqual")
    };
    assert_eq!(run1(&dropequal, &[("a", "1"), ("b", "1")]), None);
    assert!(run1(&dropequal, &[("a", "1")]).is_some());
}

#[test]
fn hashmod_shards_as_prometheus_does() {
    let rule = RuleSpec {
        source_labels: sources(&["__address__"]),
        modulus: Some(8),
        target_label: Some("__tmp_hash".into()),
        ..spec("hashmod")
    };
    // The last 8 bytes of MD5("localhost:9100") big-endian, mod 8 (Python:
    // int(hashlib.md5(b"localhost:9100").hexdigest()[16:], 16) % 8).
    let shard = run1(&rule, &[("__address__", "localhost:9100")]).unwrap();
    assert_eq!(shard[1], ("__tmp_hash".into(), "7".into()));
    let shard = run1(&rule, &[("__address__", "10.0.0.2:9100")]).unwrap();
    assert_eq!(shard[1], ("__tmp_hash".into(), "1".into()));
}

#[test]
fn labelmap_labeldrop_labelkeep_and_case() {
    let map = RuleSpec {
        regex: Some("__meta_kubernetes_pod_label_(.+)".into()),
        ..spec("labelmap")
    };
    assert_eq!(
        run1(
            &map,
            &[("__meta_kubernetes_pod_label_app", "web"), ("x", "1")]
        ),
        set(&[
            ("__meta_kubernetes_pod_label_app", "web"),
            ("app", "web"),
            ("x", "1")
        ])
    );
    let drop = RuleSpec {
        regex: Some("cpu|mode".into()),
        ..spec("labeldrop")
    };
    assert_eq!(
        run1(&drop, &[("cpu", "0"), ("mode", "idle"), ("__name__", "m")]),
        set(&[("__name__", "m")])
    );
    let keep = RuleSpec {
        regex: Some("__name__|job".into()),
        ..spec("labelkeep")
    };
    assert_eq!(
        run1(&keep, &[("a", "0"), ("job", "j"), ("__name__", "m")]),
        set(&[("__name__", "m"), ("job", "j")])
    );
    let lower = RuleSpec {
        source_labels: sources(&["a", "b"]),
        target_label: Some("c".into()),
        ..spec("lowercase")
    };
    let upper = RuleSpec {
        source_labels: sources(&["c"]),
        target_label: Some("d".into()),
        ..spec("uppercase")
    };
    assert_eq!(
        run(&[lower, upper], &[("a", "Ab"), ("b", "Cd")]),
        set(&[("a", "Ab"), ("b", "Cd"), ("c", "ab;cd"), ("d", "AB;CD")])
    );
}

#[test]
fn rules_are_checked_as_prometheus_checks_them() {
    let refused = |s: RuleSpec, field: &str| {
        let e = Rule::new(&s).unwrap_err();
        assert_eq!(e.field, field, "{s:?}: {e:?}");
    };
    refused(spec("nope"), "action");
    refused(spec("replace"), "target_label");
    refused(
        RuleSpec {
            regex: Some("a(".into()),
            ..spec("drop")
        },
        "regex",
    );
    refused(
        RuleSpec {
            target_label: Some("t".into()),
            ..spec("hashmod")
        },
        "modulus",
    );
    refused(
        RuleSpec {
            target_label: Some("1bad".into()),
            ..spec("replace")
        },
        "target_label",
    );
    refused(
        RuleSpec {
            target_label: Some("$1".into()),
            modulus: Some(2),
            ..spec("hashmod")
        },
        "target_label",
    );
    refused(
        RuleSpec {
            source_labels: sources(&["a"]),
            ..spec("labeldrop")
        },
        "source_labels",
    );
    refused(
        RuleSpec {
            target_label: Some("t".into()),
            regex: Some("x".into()),
            ..spec("keepequal")
        },
        "regex",
    );
    refused(
        RuleSpec {
            replacement: Some("a-b".into()),
            ..spec("labelmap")
        },
        "replacement",
    );
    refused(
        RuleSpec {
            source_labels: sources(&["a-b"]),
            ..spec("drop")
        },
        "source_labels",
    );
    // Templates in target_label are fine for replace.
    for t in ["x_$1", "${1}_x", "$name", "_"] {
        Rule::new(&RuleSpec {
            target_label: Some(t.into()),
            ..spec("replace")
        })
        .unwrap();
    }
}

#[test]
fn name_templates() {
    for ok in ["a", "_a1", "$1", "x_${1}_y", "$a$b", "${name}"] {
        assert!(is_name_template(ok), "{ok}");
    }
    for bad in ["", "1a", "a-b", "$", "${}", "${a", "$-"] {
        assert!(!is_name_template(bad), "{bad}");
    }
}

#[test]
fn the_memo_keeps_values_that_differ_in_their_last_bytes() {
    // Twenty-five paths that differ only in their last one or two bytes:
    // after the first round, every lookup hits.
    let mut memo = Memo::default();
    let paths: Vec<String> = (0..25).map(|i| format!("/api/v1/items/{i}")).collect();
    for p in &paths {
        assert!(!memo.slot(p).1, "{p} is new");
    }
    for _ in 0..3 {
        for p in &paths {
            assert!(memo.slot(p).1, "{p} should be remembered");
        }
    }
}
