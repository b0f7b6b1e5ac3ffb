//! The archive job: parsing the message body and checking every field before
//! any object is touched.

use serde::Deserialize;
use std::collections::{HashMap, HashSet};

/// Link lifetime when the job names none.
pub const DEFAULT_EXPIRES_IN: u32 = 3600;
/// The longest link a store will sign: 7 days, as for S3 presigned URLs.
pub const MAX_EXPIRES_IN: u32 = 7 * 24 * 3600;

/// A job as the producer wrote it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    job_id: Option<String>,
    files: Option<Vec<String>>,
    output: Option<String>,
    expires_in: Option<u64>,
}

/// A job whose fields have all been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    pub files: Vec<String>,
    pub output: String,
    pub expires_in: u32,
}

/// Parses and checks a job. The error names the field or URI at fault and is
/// meant to be the reason the message is rejected with.
///
/// `output_prefix` supplies the archive location when the job names none:
/// `{output_prefix}{job_id}.zip`.
pub fn parse(body: &str, output_prefix: Option<&str>) -> Result<Job, String> {
    let raw: RawJob = serde_json::from_str(body).map_err(|err| match err.classify() {
        // Well-formed JSON of another shape is told apart from text that
        // is not JSON at all.
        serde_json::error::Category::Data => format!(
            "job is JSON but not a job (an object with `job_id`, `files`, `output`, `expires_in`): {err}"
        ),
        _ => format!("job is not valid JSON: {err}"),
    })?;

    let job_id = match raw.job_id {
        Some(id) if !id.trim().is_empty() => id,
        Some(_) => return Err("field `job_id` is empty".into()),
        None => return Err("field `job_id` is missing".into()),
    };
    if job_id.len() > 256 || job_id.chars().any(char::is_control) {
        return Err(
            "field `job_id` must be at most 256 characters, none of them control characters".into(),
        );
    }

    let files = match raw.files {
        Some(files) if !files.is_empty() => files,
        Some(_) => return Err("field `files` is empty: nothing to archive".into()),
        None => return Err("field `files` is missing".into()),
    };
    for (index, uri) in files.iter().enumerate() {
        check_s3_uri(uri).map_err(|why| format!("files[{index}]: {why}"))?;
    }

    let output = match (raw.output, output_prefix) {
        (Some(output), _) => output,
        (None, Some(prefix)) => format!("{prefix}{job_id}.zip"),
        (None, None) => return Err("field `output` is missing".into()),
    };
    check_s3_uri(&output).map_err(|why| format!("field `output`: {why}"))?;
    if files.contains(&output) {
        return Err(format!(
            "field `output`: `{output}` is also one of the files to archive"
        ));
    }

    let expires_in = match raw.expires_in {
        None => DEFAULT_EXPIRES_IN,
        Some(secs) if (1..=u64::from(MAX_EXPIRES_IN)).contains(&secs) => secs as u32,
        Some(secs) => {
            return Err(format!(
                "field `expires_in` is {secs}: it must be between 1 and {MAX_EXPIRES_IN} seconds (7 days)"
            ));
        }
    };

    Ok(Job {
        job_id,
        files,
        output,
        expires_in,
    })
}

/// Checks the shape of an `s3://bucket/key` URI; whether the key is safe for
/// the store is the store's to judge.
fn check_s3_uri(uri: &str) -> Result<(), String> {
    let Some(rest) = uri.strip_prefix("s3://") else {
        return Err(format!("`{uri}` is not an s3:// URI"));
    };
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(()),
        _ => Err(format!("`{uri}` names no bucket and key")),
    }
}

/// Gives each input a safe, unique entry name: the last segment of its key,
/// with path separators and control characters replaced, and ` (2)`, ` (3)`…
/// before the extension of a name already taken.
pub fn entry_names(files: &[String]) -> Vec<String> {
    let mut taken = HashSet::new();
    // The next suffix to try for each base name, so a job that lists one
    // name many times stays linear.
    let mut next_suffix: HashMap<String, usize> = HashMap::new();
    files
        .iter()
        .map(|uri| {
            let base = safe_name(uri.rsplit('/').next().unwrap_or_default());
            if taken.insert(base.clone()) {
                return base;
            }
            let (stem, ext) = split_extension(&base);
            let n = next_suffix.entry(base.clone()).or_insert(2);
            loop {
                let name = format!("{stem} ({n}){ext}");
                *n += 1;
                if taken.insert(name.clone()) {
                    return name;
                }
            }
        })
        .collect()
}

fn safe_name(segment: &str) -> String {
    let cleaned: String = segment
        .chars()
        .map(|c| {
            if c.is_control() || c == '\\' || c == '/' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() || trimmed.chars().all(|c| c == '.') {
        "file".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Splits `name.ext` into (`name`, `.ext`); a leading dot is not an extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    }
}

/// Whether an input is already compressed, so deflating it would only cost
/// time: judged by extension, then by content type.
pub fn already_compressed(name: &str, content_type: Option<&str>) -> bool {
    const EXTENSIONS: &[&str] = &[
        "zip", "gz", "tgz", "bz2", "tbz2", "xz", "txz", "zst", "lz", "lz4", "lzma", "7z", "rar",
        "br", "jar", "war", "apk", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "jpg",
        "jpeg", "png", "gif", "webp", "avif", "heic", "heif", "jxl", "mp4", "m4v", "mov", "mkv",
        "webm", "avi", "mp3", "m4a", "aac", "ogg", "oga", "opus", "flac", "woff", "woff2",
    ];
    let ext = split_extension(name).1.trim_start_matches('.');
    if EXTENSIONS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(ext))
    {
        return true;
    }
    match content_type.map(|ct| ct.to_ascii_lowercase()) {
        Some(ct) => {
            let uncompressed_media = [
                "image/svg",
                "image/bmp",
                "image/tiff",
                "audio/wav",
                "audio/x-wav",
            ];
            let media =
                ct.starts_with("image/") || ct.starts_with("video/") || ct.starts_with("audio/");
            (media && !uncompressed_media.iter().any(|u| ct.starts_with(u)))
                || ct == "application/zip"
                || ct == "application/gzip"
                || ct == "application/x-7z-compressed"
                || ct == "application/zstd"
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        r#"{"job_id":"j-1","files":["s3://docs/a.txt"],"output":"s3://archives/j-1.zip"}"#;

    #[test]
    fn a_complete_job_parses_with_the_default_expiry() {
        let job = parse(GOOD, None).unwrap();
        assert_eq!(job.job_id, "j-1");
        assert_eq!(job.files, vec!["s3://docs/a.txt"]);
        assert_eq!(job.expires_in, DEFAULT_EXPIRES_IN);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("not json", "not valid JSON"),
            (
                r#"{"files":["s3://a/b"],"output":"s3://o/p"}"#,
                "`job_id` is missing",
            ),
            (
                r#"{"job_id":"j","output":"s3://o/p"}"#,
                "`files` is missing",
            ),
            (
                r#"{"job_id":"j","files":[],"output":"s3://o/p"}"#,
                "`files` is empty",
            ),
            (
                r#"{"job_id":"j","files":["http://x/y"],"output":"s3://o/p"}"#,
                "files[0]: `http://x/y` is not an s3:// URI",
            ),
            (
                r#"{"job_id":"j","files":["s3://bucket"],"output":"s3://o/p"}"#,
                "files[0]: `s3://bucket` names no bucket and key",
            ),
            (
                r#"{"job_id":"j","files":["s3://a/b"]}"#,
                "`output` is missing",
            ),
            (
                r#"{"job_id":"j","files":["s3://a/b"],"output":"/tmp/x.zip"}"#,
                "field `output`: `/tmp/x.zip` is not an s3:// URI",
            ),
            (
                r#"{"job_id":"j","files":["s3://a/b"],"output":"s3://a/b"}"#,
                "also one of the files",
            ),
            (
                r#"{"job_id":"j","files":["s3://a/b"],"output":"s3://o/p","expires_in":0}"#,
                "`expires_in` is 0",
            ),
            (
                r#"{"job_id":"j","files":["s3://a/b"],"output":"s3://o/p","expires_in":604801}"#,
                "`expires_in` is 604801",
            ),
            (
                r#"{"job_id":"j","files":["s3://a/b"],"output":"s3://o/p","extra":1}"#,
                "unknown field `extra`",
            ),
            (r#"["s3://a/b"]"#, "job is JSON but not a job"),
            (
                r#"{"job_id":7,"files":["s3://a/b"]}"#,
                "job is JSON but not a job",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body, None).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn output_defaults_to_the_prefix_and_job_id() {
        let job = parse(
            r#"{"job_id":"j-9","files":["s3://d/a"]}"#,
            Some("s3://archives/"),
        )
        .unwrap();
        assert_eq!(job.output, "s3://archives/j-9.zip");
    }

    #[test]
    fn entry_names_are_safe_and_unique() {
        let files: Vec<String> = [
            "s3://d/x/a.txt",
            "s3://d/y/a.txt",
            "s3://e/a.txt",
            "s3://d/..",
            "s3://d/back\\slash",
            "s3://d/.profile",
            "s3://d/z/.profile",
            "s3://d/b (2).txt",
            "s3://d/b.txt",
            "s3://d/q/b.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            entry_names(&files),
            [
                "a.txt",
                "a (2).txt",
                "a (3).txt",
                "file",
                "back_slash",
                ".profile",
                ".profile (2)",
                "b (2).txt",
                "b.txt",
                "b (3).txt"
            ]
        );
    }

    #[test]
    fn compressed_media_is_stored_and_text_is_deflated() {
        assert!(already_compressed("photo.JPG", None));
        assert!(already_compressed("clip", Some("video/mp4")));
        assert!(!already_compressed("drawing", Some("image/svg+xml")));
        assert!(!already_compressed("notes.txt", Some("text/plain")));
        assert!(!already_compressed("report.pdf", None));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn uri() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "s3://[a-z]{0,5}/?[a-z./\\\x00-\x1f]{0,12}",
                Just("s3://docs/a.txt".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Whatever a sender puts in a job, it is parsed or rejected
            /// with a reason; a job that parses has every field checked.
            #[test]
            fn a_parsed_job_has_every_field_checked(
                job_id in any::<String>(),
                files in proptest::collection::vec(uri(), 0..5),
                output in proptest::option::of(uri()),
                expires_in in proptest::option::of(any::<u64>()),
                prefix in proptest::option::of(Just("s3://archives/".to_string())),
            ) {
                let mut body = serde_json::json!({"job_id": job_id, "files": files});
                if let Some(output) = &output { body["output"] = output.clone().into(); }
                if let Some(secs) = expires_in { body["expires_in"] = secs.into(); }
                match parse(&body.to_string(), prefix.as_deref()) {
                    Ok(job) => {
                        prop_assert!(!job.job_id.trim().is_empty() && job.job_id.len() <= 256);
                        prop_assert!(!job.job_id.chars().any(char::is_control));
                        prop_assert!(!job.files.is_empty());
                        prop_assert!(job.files.iter().all(|f| f.starts_with("s3://")));
                        prop_assert!(job.output.starts_with("s3://"));
                        prop_assert!(!job.files.contains(&job.output));
                        prop_assert!((1..=MAX_EXPIRES_IN).contains(&job.expires_in));
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            /// Entry names are unique and can never climb out of the
            /// folder an archive is unpacked into.
            #[test]
            fn entry_names_are_unique_and_safe(files in proptest::collection::vec(uri(), 1..40)) {
                let names = entry_names(&files);
                prop_assert_eq!(names.len(), files.len());
                let unique: HashSet<&String> = names.iter().collect();
                prop_assert_eq!(unique.len(), names.len());
                for name in &names {
                    prop_assert!(!name.is_empty());
                    prop_assert!(!name.contains('/') && !name.contains('\\'));
                    prop_assert!(!name.chars().any(char::is_control));
                    prop_assert!(name != "." && name != "..");
                }
            }
        }
    }
}
