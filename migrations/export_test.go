package migrations

// NewProvider lets tests step through relay's migrations one by one.
var NewProvider = newProvider
