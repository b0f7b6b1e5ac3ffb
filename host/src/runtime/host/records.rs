//! The `records` interface: table and key checked by the backend, failures
//! returned to the processor as strings naming them.

use crate::runtime::bindings::records as wit;
use crate::runtime::state::HostState;

impl wit::Host for HostState {
    async fn put(
        &mut self,
        table: String,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        if let Err(denied) = self.grants.check_table(&table) {
            return Ok(Err(denied));
        }
        let options = crate::records::PutOptions {
            owner: &self.owner,
            overwrite: self.grants.overwrite_records,
        };
        Ok(self
            .services
            .records
            .put(&table, &key, &value, options)
            .await
            .map_err(|err| err.to_string()))
    }

    async fn get(
        &mut self,
        table: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, String>> {
        if let Err(denied) = self.grants.check_table(&table) {
            return Ok(Err(denied));
        }
        Ok(self
            .services
            .records
            .get(&table, &key)
            .await
            .map_err(|err| err.to_string()))
    }
}
