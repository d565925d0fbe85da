print("uds")
