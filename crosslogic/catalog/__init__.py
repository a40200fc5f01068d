"""The catalog: models, regions and their prices (versioned list prices, tenant overrides),
managed through the admin API and ``crosslogic models|regions|prices|tenant-prices``."""
