return {
  extends = "ubuntu-2004",
  name = "ubuntu-2004-small",
  vars = { disk_size = "20480" },
}
