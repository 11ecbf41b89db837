//! `eddy streams`: creates the JetStream streams a pipeline file needs (input, outputs,
//! dead letters, broadcast inputs) where they do not exist yet. Existing streams are left as
//! they are.

use anyhow::Context;
use async_nats::jetstream::stream;

use crate::config::PipelineConfig;
use crate::transport::Nats;

/// Creates missing streams; returns a line per stream saying what was done.
pub async fn ensure(
    nats: &Nats,
    cfg: &PipelineConfig,
    input_subjects: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let mut wanted: Vec<(String, Vec<String>)> =
        vec![(cfg.input.stream.clone(), input_subjects.to_vec())];
    let mut outputs = vec![cfg.output.subject.clone()];
    outputs.extend(cfg.output.allow.iter().cloned());
    wanted.push((format!("{}_OUT", cfg.pipeline.name.to_uppercase()), outputs));
    wanted.push((
        format!("{}_DLQ", cfg.pipeline.name.to_uppercase()),
        vec![cfg.dead_letter.subject.clone()],
    ));
    for b in cfg.broadcast.values() {
        let subjects = if b.subjects.is_empty() {
            vec![format!("{}.>", b.stream.to_lowercase())]
        } else {
            b.subjects.clone()
        };
        wanted.push((b.stream.clone(), subjects));
    }
    let replicas = crate::transport::replicas(nats);
    let input_stream = cfg.input.stream.clone();
    for (name, subjects) in wanted {
        let mut missing = Vec::new();
        for s in &subjects {
            if nats.js.stream_by_subject(s.as_str()).await.is_err() {
                missing.push(s.clone());
            }
        }
        if nats.js.get_stream(&name).await.is_ok() {
            report.push(format!("stream {name}: exists"));
            continue;
        }
        if missing.is_empty() {
            report.push(format!(
                "stream {name}: not needed, subjects already captured"
            ));
            continue;
        }
        let transform = match &cfg.cluster {
            Some(cluster) if name == input_stream => Some(partition_transform(
                cluster,
                &missing,
                cfg.partitions.count,
            )?),
            _ => None,
        };
        let note = transform
            .as_ref()
            .map(|t| format!(", stored as {}", t.destination))
            .unwrap_or_default();
        nats.js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: missing.clone(),
                subject_transform: transform,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create stream {name} for {missing:?}"))?;
        report.push(format!(
            "stream {name}: created for {}{note} (replicas: {replicas})",
            missing.join(", ")
        ));
    }
    Ok(report)
}

/// The input stream's subject transform in cluster mode: events published on the one input
/// subject, whose single `*` token is the key, are stored under their partition's subject
/// (`cluster.partition_subject`, followed by the key token if it ends in `.>`), the partition
/// computed by NATS with the hash Eddy's key groups use (`{{partition(count, 1)}}`).
pub fn partition_transform(
    cluster: &crate::config::ClusterConfig,
    subjects: &[String],
    count: u32,
) -> anyhow::Result<stream::SubjectTransform> {
    let [source] = subjects else {
        anyhow::bail!(
            "with [cluster], input.subjects must be one subject whose `*` token is the key (e.g. \"txn.in.*\"); got {subjects:?}"
        );
    };
    let wildcards = source.split('.').filter(|t| *t == "*").count();
    anyhow::ensure!(
        wildcards == 1 && !source.split('.').any(|t| t == ">"),
        "with [cluster], input subject `{source}` must have exactly one `*` token, the key (e.g. \"txn.in.*\")"
    );
    let target = cluster
        .partition_subject
        .trim_end_matches(".>")
        .trim_end_matches(".*");
    let partitioned = target.replace("{partition}", &format!("{{{{partition({count},1)}}}}"));
    let destination = if cluster.keeps_key_token() {
        format!("{partitioned}.{{{{wildcard(1)}}}}")
    } else {
        partitioned
    };
    Ok(stream::SubjectTransform {
        source: source.clone(),
        destination,
    })
}

/// `eddy streams`: creates the pipeline's missing streams; the input stream captures
/// `input_subject` if given, else `input.subjects`.
pub async fn command(pipeline: &std::path::Path, input_subject: Vec<String>) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let nats = crate::transport::connect(&cfg.nats, "eddy-streams").await?;
    let subjects = if input_subject.is_empty() {
        cfg.input.subjects.clone()
    } else {
        input_subject
    };
    anyhow::ensure!(
        !subjects.is_empty(),
        "input.subjects is empty: pass --input-subject to say what the input stream captures"
    );
    for line in ensure(&nats, &cfg, &subjects).await? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::partition_transform;
    use crate::config::ClusterConfig;

    fn cluster(partition_subject: &str) -> ClusterConfig {
        ClusterConfig {
            partition_subject: partition_subject.into(),
            lease_ms: 6_000,
        }
    }

    #[test]
    fn the_transform_keeps_the_key_token_only_where_the_partition_subject_asks() {
        let subjects = ["txn.in.*".to_string()];
        let literal = partition_transform(&cluster("txn.p.{partition}"), &subjects, 16)
            .expect("one subject per partition");
        assert_eq!(literal.source, "txn.in.*");
        assert_eq!(literal.destination, "txn.p.{{partition(16,1)}}");
        let kept = partition_transform(&cluster("txn.p.{partition}.>"), &subjects, 16)
            .expect("the key token kept");
        assert_eq!(
            kept.destination,
            "txn.p.{{partition(16,1)}}.{{wildcard(1)}}"
        );
        let two = ["txn.in.*".to_string(), "txn.x.*".to_string()];
        let e = partition_transform(&cluster("txn.p.{partition}"), &two, 16)
            .expect_err("two input subjects");
        assert!(e.to_string().contains("must be one subject"), "{e}");
    }
}
