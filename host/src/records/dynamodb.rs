//! Records in one DynamoDB table: partition key `tbl` (the records table),
//! sort key `key`, and the `value` with `updated_ms`. Reads are strongly
//! consistent, so a producer that reads right after a processor wrote sees
//! the write.

use super::{PutOptions, Records, RecordsError, check, taken};
use crate::aws::{AwsOptions, Failure, classify};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};

/// Records kept in the DynamoDB table `table`.
#[derive(Clone, Debug)]
pub struct DynamoRecords {
    client: Client,
    table: String,
}

impl DynamoRecords {
    pub async fn connect(options: &AwsOptions, table: &str) -> Self {
        DynamoRecords::new(&options.load().await, table)
    }

    pub fn new(config: &aws_config::SdkConfig, table: &str) -> Self {
        DynamoRecords {
            client: Client::new(config),
            table: table.to_string(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// What went wrong with `what`, for a processor to read.
    fn failure<E>(&self, what: String, err: &SdkError<E, HttpResponse>) -> RecordsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match classify(&what, err) {
            Failure::Invalid(text) => RecordsError::Invalid(text),
            Failure::Missing(_) => RecordsError::Unavailable(format!(
                "{what}: the table does not exist (deploy/ creates it)"
            )),
            Failure::Denied(text) | Failure::Unavailable(text) => RecordsError::Unavailable(text),
        }
    }

    /// Checks that the table exists and these credentials can describe it.
    pub async fn check_table(&self) -> Result<(), RecordsError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|err| self.failure(format!("DynamoDB table `{}`", self.table), &err))?;
        Ok(())
    }

    /// Creates the table (on-demand billing), as the CloudFormation template
    /// in `deploy/` does; for tests and trying things out.
    pub async fn create_table(&self) -> Result<(), RecordsError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set")
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("name and kind are set")
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute("tbl"))
            .attribute_definitions(attribute("key"))
            .key_schema(key("tbl", KeyType::Hash))
            .key_schema(key("key", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|err| {
                self.failure(format!("creating DynamoDB table `{}`", self.table), &err)
            })?;
        Ok(())
    }
}

#[async_trait]
impl Records for DynamoRecords {
    async fn put(
        &self,
        table: &str,
        key: &str,
        value: &str,
        options: PutOptions<'_>,
    ) -> Result<(), RecordsError> {
        check(table, key, Some(value))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("tbl", AttributeValue::S(table.to_string()))
            .item("key", AttributeValue::S(key.to_string()))
            .item("value", AttributeValue::S(value.to_string()))
            .item("owner", AttributeValue::S(options.owner.to_string()))
            .item("updated_ms", AttributeValue::N(now.to_string()));
        if !options.overwrite {
            put = put
                .condition_expression(
                    "attribute_not_exists(#tbl) OR #owner = :owner OR #value = :value",
                )
                .expression_attribute_names("#tbl", "tbl")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_names("#value", "value")
                .expression_attribute_values(":owner", AttributeValue::S(options.owner.to_string()))
                .expression_attribute_values(":value", AttributeValue::S(value.to_string()));
        }
        match put.send().await {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(taken(table, key))
            }
            Err(err) => Err(self.failure(
                format!("putting `{}` in table `{table}`", crate::text::escape(key)),
                &err,
            )),
        }
    }

    async fn get(&self, table: &str, key: &str) -> Result<Option<String>, RecordsError> {
        check(table, key, None)?;
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("tbl", AttributeValue::S(table.to_string()))
            .key("key", AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| self.failure(format!("getting `{key}` from table `{table}`"), &err))?;
        Ok(out
            .item()
            .and_then(|item| item.get("value"))
            .and_then(|value| value.as_s().ok())
            .cloned())
    }
}
