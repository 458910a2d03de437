"""Landing files -> raw tables: the data contract as data, formats, validation, manifest."""
